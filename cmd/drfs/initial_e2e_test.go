package main

import (
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
)

// TestInitialCopyAfterOutage: a mount whose target is down at first keeps
// its changes in the log; when the target comes up, the VM's first point
// is its initial copy (no point of changes without their base comes
// before it), and the latest point equals the source.
func TestInitialCopyAfterOutage(t *testing.T) {
	needFUSE(t)
	pki := tlstest.New(t)
	certs := t.TempDir()
	srvCert, srvKey := pki.Server.WriteFiles(t, certs, "server")
	aCert, aKey := pki.ClientA.WriteFiles(t, certs, "a")
	ca := pki.CA.WriteFile(t, certs, "ca")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	d := newDirs(t)
	tgt := "https://" + addr
	tlsA := []string{"--tls-cert", aCert, "--tls-key", aKey, "--tls-ca", ca}
	m := startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s"}, tlsA...)...)
	rng := rand.New(rand.NewPCG(11, 12))
	for range 3 {
		writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 10)
		time.Sleep(1200 * time.Millisecond) // rounds fail; generations freeze in the log
	}

	srv := exec.Command(drfsBin, "target", "serve", "--dir", t.TempDir(), "--listen", addr, "--cert", srvCert, "--key", srvKey, "--client-ca", ca)
	srvLog := &syncBuffer{}
	srv.Stderr = srvLog
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := exec.Command(drfsBin, append([]string{"points", "--target", tgt, "vm1"}, tlsA...)...).CombinedOutput()
		if err == nil && len(out) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no point of vm1 within 60s of the target coming up:\n%s\n%s", m.stderr, srvLog)
		}
		time.Sleep(200 * time.Millisecond)
	}
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 10)
	m.stop(t)
	pts := points(t, tgt, "vm1", tlsA...)
	if len(pts) == 0 || pts[0].Kind != target.KindSnapshot {
		t.Fatalf("the first point of vm1 is %+v, want the initial copy from a snapshot", pts)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"), tlsA...)
}
