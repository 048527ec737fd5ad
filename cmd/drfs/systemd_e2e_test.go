package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdNotify drives the readiness protocol of Type=notify through a
// real notify socket: the agent says READY=1 only once its mount is up and
// its control socket answers (having created its missing mountpoint), and
// STOPPING=1 when SIGTERM stops it.
func TestSystemdNotify(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	d.mnt = filepath.Join(t.TempDir(), "run", "drfs", "vms") // missing: the agent creates it
	base := t.TempDir()
	notify := filepath.Join(base, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	socket := filepath.Join(base, "agent.sock")
	cmd := exec.Command(drfsBin, "agent", "--source", d.src, "--mountpoint", d.mnt, "--state", d.state, "--socket", socket)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
		if isMounted(d.mnt) {
			exec.Command("umount", "-l", d.mnt).Run()
		}
	})
	read := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		for {
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no %s from the agent: %v\n%s", want, err, stderr)
			}
			if msg := string(buf[:n]); strings.Contains(msg, want) {
				return
			}
		}
	}
	read("READY=1")
	if !isMounted(d.mnt) {
		t.Errorf("READY=1 before %s was mounted", d.mnt)
	}
	if out, err := drfsRun(t, "status", "--socket", socket); err != nil {
		t.Errorf("READY=1 before the control socket answered: %v\n%s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	read("STOPPING=1")
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent after SIGTERM: %v\n%s", err, stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("agent did not stop\n%s", stderr)
	}
}
