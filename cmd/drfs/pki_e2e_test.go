package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startServe starts drfs target serve with the given certificate files on
// a free loopback port and returns its URL.
func startServe(t *testing.T, cert, key, clientCA string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := exec.Command(drfsBin, "target", "serve", "--dir", t.TempDir(), "--listen", addr, "--cert", cert, "--key", key, "--client-ca", clientCA)
	log := &syncBuffer{}
	srv.Stderr = log
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "https://" + addr
		}
		if i > 100 {
			t.Fatalf("target serve not listening:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPKI: a two-site setup with certificates made only by drfs pki: the
// source replicates to the target over mutual TLS; a target certificate
// that does not name the address connected to, and a host certificate of
// another CA, get errors that say so; files are never replaced and keys
// are private.
func TestPKI(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		out, err := drfsRun(t, args...)
		if err != nil {
			t.Fatalf("drfs %v: %v\n%s", args, err, out)
		}
		return out
	}
	run("pki", "init", "--dir", dir)
	run("pki", "server", "target", "--dir", dir, "--ip", "127.0.0.1", "--dns", "localhost")
	run("pki", "server", "misnamed", "--dir", dir, "--dns", "dr.example.com")
	run("pki", "host", "src-a", "--dir", dir)
	run("pki", "init", "--dir", other, "--name", "another CA")
	run("pki", "host", "src-a", "--dir", other)
	for _, f := range []string{"ca.key", "target.key", "src-a.key"} {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, st.Mode().Perm())
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"pki", "init", "--dir", dir}, "exists already"},
		{[]string{"pki", "host", "src-a", "--dir", dir}, "exists already"},
		{[]string{"pki", "host", "a/b", "--dir", dir}, "is not a letter"},
		{[]string{"pki", "server", "bare", "--dir", dir}, "--dns NAME and/or --ip ADDR"},
		{[]string{"pki", "host", "h", "--dir", t.TempDir()}, "run drfs pki init"},
	} {
		if out, err := drfsRun(t, c.args...); err == nil || !strings.Contains(out, c.want) {
			t.Errorf("drfs %v: %v, want an error with %q:\n%s", c.args, err, c.want, out)
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	host := []string{"--tls-cert", filepath.Join(dir, "src-a.crt"), "--tls-key", filepath.Join(dir, "src-a.key"), "--tls-ca", ca}

	tgt := startServe(t, filepath.Join(dir, "target.crt"), filepath.Join(dir, "target.key"), ca)
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/dev/fuse"); err == nil {
			d := newDirs(t)
			m := startMount(t, d.src, d.mnt, d.state, append([]string{"--target", tgt, "--interval", "1s"}, host...)...)
			waitCut(t, d.state, "vm1", time.Now())
			m.stop(t)
			restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"), host...)
		}
	}
	run(append([]string{"points", "--target", tgt}, host...)...)
	// Recovery-site commands take the target and TLS files from the
	// environment too.
	env := exec.Command(drfsBin, "points", "--json")
	env.Env = append(os.Environ(), "DRFS_TARGET="+tgt, "DRFS_TLS_CERT="+host[1], "DRFS_TLS_KEY="+host[3], "DRFS_TLS_CA="+ca)
	if out, err := env.CombinedOutput(); err != nil {
		t.Errorf("drfs points with DRFS_TARGET and DRFS_TLS_*: %v\n%s", err, out)
	}

	foreign := []string{"--tls-cert", filepath.Join(other, "src-a.crt"), "--tls-key", filepath.Join(other, "src-a.key"), "--tls-ca", ca}
	if out, err := drfsRun(t, append([]string{"points", "--target", tgt}, foreign...)...); err == nil || !strings.Contains(out, "signed by the CA it trusts") {
		t.Errorf("points with a host certificate of another CA: %v\n%s", err, out)
	}
	misnamed := startServe(t, filepath.Join(dir, "misnamed.crt"), filepath.Join(dir, "misnamed.key"), ca)
	if out, err := drfsRun(t, append([]string{"points", "--target", misnamed}, host...)...); err == nil || !strings.Contains(out, "valid for dr.example.com, not for 127.0.0.1") {
		t.Errorf("points from a target whose certificate names another host: %v\n%s", err, out)
	}
}
