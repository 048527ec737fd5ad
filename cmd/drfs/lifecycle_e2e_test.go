package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// refused runs drfs with args, which must fail within 30 s with a one-line
// error holding every string of want, having mounted nothing on mnt and
// created none of the paths of absent. A drfs that mounts instead is
// stopped, and the test fails.
func refused(t *testing.T, mnt string, absent []string, args []string, want ...string) {
	t.Helper()
	cmd := exec.Command(drfsBin, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	var err error
wait:
	for {
		select {
		case err = <-done:
			break wait
		case <-time.After(20 * time.Millisecond):
		}
		if mounted := isMounted(mnt); mounted || time.Now().After(deadline) {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			if isMounted(mnt) {
				exec.Command("umount", "-l", mnt).Run()
			}
			t.Fatalf("drfs %v was not refused (mounted %s: %v):\n%s", args, mnt, mounted, out)
		}
	}
	text := strings.TrimSpace(out.String())
	if err == nil {
		t.Fatalf("drfs %v exited 0, want a refusal:\n%s", args, text)
	}
	if strings.Contains(text, "\n") {
		t.Errorf("drfs %v: the error is not one line:\n%s", args, text)
	}
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("drfs %v: the error does not say %q:\n%s", args, w, text)
		}
	}
	for _, p := range absent {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("drfs %v created %s", args, p)
		}
	}
}

// TestSecondMountRefused: while a drfs agent or mount serves a source, a
// second agent or mount of the same source (by any path) is refused with
// an error naming the first one's PID and command line, and creates and
// mounts nothing; the source is free again once the first one stopped or
// was killed.
func TestSecondMountRefused(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	other := t.TempDir()
	mnt2, state2, socket2 := filepath.Join(other, "mnt"), filepath.Join(other, "state"), filepath.Join(other, "agent.sock")
	os.MkdirAll(mnt2, 0o755)
	link := filepath.Join(other, "src-link")
	if err := os.Symlink(d.src, link); err != nil {
		t.Fatal(err)
	}
	absent := []string{state2, socket2}
	secondAgent := func(src string) []string {
		return []string{"agent", "--source", src, "--mountpoint", mnt2, "--state", state2, "--socket", socket2}
	}
	secondMount := func(src string) []string { return []string{"mount", src, mnt2, "--state", state2} }

	a := startAgent(t, d, socket)
	holder := fmt.Sprintf("is already served by drfs (pid %d: drfs agent --source %s", a.cmd.Process.Pid, d.src)
	refused(t, mnt2, absent, secondAgent(d.src), "source "+d.src+" ", holder, "stop it first")
	refused(t, mnt2, absent, secondMount(d.src), holder)
	refused(t, mnt2, absent, secondMount(link), holder)
	// The first one goes on.
	writeRandom(t, rand.New(rand.NewPCG(1, 2)), filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 3)
	vmStatus(t, socket, "vm1")
	a.stop(t)

	m := startMount(t, d.src, d.mnt, d.state)
	holder = fmt.Sprintf("is already served by drfs (pid %d: drfs mount %s %s", m.cmd.Process.Pid, d.src, d.mnt)
	refused(t, mnt2, absent, secondAgent(d.src), holder)
	refused(t, mnt2, absent, secondMount(d.src), holder)
	// The kernel drops the claim of a process that dies.
	m.kill(t)
	m = startMount(t, d.src, mnt2, state2)
	m.stop(t)
}

// waitExit waits for a drfs process to end by itself and returns its exit
// error.
func waitExit(t *testing.T, done <-chan error, stderr *syncBuffer) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Minute):
		t.Fatalf("drfs did not exit within 2 minutes of its mount being removed:\n%s", stderr)
		return nil
	}
}

// checkRemovedOutside checks how a drfs whose mount was removed from
// outside ended: after a clean shutdown (the change log closed), with a
// non-zero exit status and a last line that says what happened.
func checkRemovedOutside(t *testing.T, err error, stderr string, d dirs, closed string) {
	t.Helper()
	if err == nil {
		t.Fatalf("drfs exited 0 after its mount was removed from outside; want a failure a service manager restarts:\n%s", stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	for _, w := range []string{"mount at " + d.mnt + " was removed from outside", "nothing tracks writes to " + d.src + " any more"} {
		if !strings.Contains(last, w) {
			t.Errorf("last line %q does not say %q:\n%s", last, w, stderr)
		}
	}
	if !strings.Contains(stderr, closed) {
		t.Errorf("no clean shutdown (%q) before the error:\n%s", closed, stderr)
	}
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.Resync {
		t.Errorf("disk flagged for resync after the shutdown: %s", ds.Reason)
	}
}

// TestUnmountedFromOutside: a drfs mount and a drfs agent whose mount is
// removed by fusermount3 -u or umount -l ship their last generation and
// close the change log as on SIGTERM, then exit non-zero saying that
// nothing tracks the source any more; SIGTERM still exits 0.
func TestUnmountedFromOutside(t *testing.T) {
	needFUSE(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	const size = 64 << 20

	t.Run("mount", func(t *testing.T) {
		d := newDirs(t)
		tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
		m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1h")
		writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), size, 10)
		if out, err := exec.Command("fusermount3", "-u", d.mnt).CombinedOutput(); err != nil {
			t.Fatalf("fusermount3 -u: %v: %s", err, out)
		}
		err := waitExit(t, m.done, m.stderr)
		checkRemovedOutside(t, err, m.stderr.String(), d, "unmounted; change log closed cleanly")
		restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))

		m = startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "1h")
		m.stop(t)
	})

	t.Run("agent", func(t *testing.T) {
		d := newDirs(t)
		tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
		socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
		a := startAgent(t, d, socket, "--target", tgt)
		if out, err := drfsRun(t, "protect", "vm1", "--interval", "1h", "--wait", "--socket", socket); err != nil {
			t.Fatalf("drfs protect: %v\n%s\n%s", err, out, a.stderr)
		}
		writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), size, 10)
		if out, err := exec.Command("umount", "-l", d.mnt).CombinedOutput(); err != nil {
			t.Fatalf("umount -l: %v: %s", err, out)
		}
		err := waitExit(t, a.done, a.stderr)
		checkRemovedOutside(t, err, a.stderr.String(), d, "agent stopped; change log closed cleanly")
		restoreAndCompare(t, tgt, "vm1", "latest", readAll(t, filepath.Join(d.src, "vm1"), "disk.img"))

		a = startAgent(t, d, socket)
		a.stop(t)
	})
}

// writeAgentConf writes an agent configuration (YAML) of d with the extra
// lines and returns its path.
func writeAgentConf(t *testing.T, d dirs, extra ...string) string {
	t.Helper()
	conf := filepath.Join(filepath.Dir(d.state), "agent.yaml")
	text := fmt.Sprintf("source: %q\nmountpoint: %q\nstate: %q\n%s\n", d.src, d.mnt, d.state, strings.Join(extra, "\n"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return conf
}

// TestAgentConfigIgnoresTLSEnv: with --config, the DRFS_TLS_* variables
// of the environment are not flags: the agent starts with the file's
// settings (not the variables' missing files); a real --tls-ca flag still
// conflicts with --config.
func TestAgentConfigIgnoresTLSEnv(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	conf := writeAgentConf(t, d, "target: dir://"+filepath.Join(filepath.Dir(d.src), "target"))
	missing := filepath.Join(t.TempDir(), "no-such")
	t.Setenv("DRFS_TLS_CERT", missing+".crt")
	t.Setenv("DRFS_TLS_KEY", missing+".key")
	t.Setenv("DRFS_TLS_CA", missing+"-ca.crt")

	refused(t, d.mnt, []string{d.state, socket}, []string{"agent", "--config", conf, "--socket", socket, "--tls-ca", missing},
		"give either --config or the settings as flags", "--tls-ca")
	a := startAgentArgs(t, d.mnt, socket, "agent", "--config", conf, "--socket", socket)
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "30s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect: %v\n%s\n%s", err, out, a.stderr)
	}
	a.stop(t)
}

// TestAgentBadTargetAtStart: a target URL that is not one, an https target
// without its TLS files, or a TLS file that does not exist, in the flags or
// in the configuration file, is refused when the agent starts with a
// one-line error naming the setting, before anything is created or
// mounted, and without contacting the network.
func TestAgentBadTargetAtStart(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	socket := filepath.Join(filepath.Dir(d.state), "agent.sock")
	pem := filepath.Join(t.TempDir(), "host.crt")
	if err := os.WriteFile(pem, []byte("not checked here"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "ca.crt")
	flags := []string{"agent", "--source", d.src, "--mountpoint", d.mnt, "--state", d.state, "--socket", socket}
	absent := []string{d.state, socket}
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"unknown kind", []string{"--target", "ftp://x/y"}, []string{"--target", "unknown kind"}},
		{"relative dir", []string{"--target", "dir://rel/path"}, []string{"--target", "dir:///absolute/path"}},
		{"https without TLS", []string{"--target", "https://127.0.0.1:1"}, []string{"--target", "tls-cert"}},
		{"missing CA", []string{"--target", "https://127.0.0.1:1", "--tls-cert", pem, "--tls-key", pem, "--tls-ca", missing},
			[]string{"--tls-ca " + missing, "no such file"}},
		{"missing CA without a target", []string{"--tls-ca", missing}, []string{"--tls-ca " + missing}},
	} {
		t.Run("flags/"+c.name, func(t *testing.T) {
			refused(t, d.mnt, absent, append(append([]string{}, flags...), c.args...), c.want...)
		})
	}
	for _, c := range []struct {
		name  string
		lines []string
		want  []string
	}{
		{"unknown kind", []string{"target: ftp://x/y"}, []string{"target", "unknown kind"}},
		{"missing CA", []string{"target: https://127.0.0.1:1", "tls-cert: " + pem, "tls-key: " + pem, "tls-ca: " + missing},
			[]string{"tls-ca " + missing, "no such file"}},
		{"missing key", []string{"target: https://127.0.0.1:1", "tls-cert: " + pem, "tls-key: " + missing, "tls-ca: " + pem},
			[]string{"tls-key " + missing}},
	} {
		t.Run("config/"+c.name, func(t *testing.T) {
			conf := writeAgentConf(t, d, c.lines...)
			refused(t, d.mnt, absent, []string{"agent", "--config", conf, "--socket", socket}, append(c.want, conf+": ")...)
		})
	}
}
