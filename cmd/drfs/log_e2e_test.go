package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
)

// logFile is a file that a drfs process writes its standard error to;
// journal makes it look like the systemd journal's stream to that process
// (JOURNAL_STREAM names the file's device and inode, as systemd does).
type logFile struct {
	f    *os.File
	path string
}

func newLogFile(t *testing.T) *logFile {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stderr")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &logFile{f, path}
}

// journal is the JOURNAL_STREAM that names the file.
func (l *logFile) journal(t *testing.T) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(l.f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino)
}

func (l *logFile) String() string {
	data, _ := os.ReadFile(l.path)
	return string(data)
}

// wait waits until the file has a line matching re.
func (l *logFile) wait(t *testing.T, re string, timeout time.Duration) {
	t.Helper()
	rx := regexp.MustCompile(`(?m)` + re)
	for deadline := time.Now().Add(timeout); !rx.MatchString(l.String()); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %q within %v:\n%s", re, timeout, l)
		}
	}
}

// journalLine and terminalLine are the two shapes of a line of the
// daemons' log.
var (
	journalLine  = regexp.MustCompile(`^<[3467]>(ERROR|WARN|INFO|DEBUG) \S`)
	terminalLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) (ERROR|WARN|INFO|DEBUG) \S`)
)

// checkShape checks that every line of out has the shape rx.
func checkShape(t *testing.T, out string, rx *regexp.Regexp) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !rx.MatchString(line) {
			t.Errorf("line %q is not of the shape %s:\n%s", line, rx, out)
		}
	}
}

// serveLogged starts drfs target serve with its standard error in log and
// env added to its environment, and returns its address and the flags of
// a client certificate it accepts.
func serveLogged(t *testing.T, log *logFile, env []string, args ...string) (*exec.Cmd, string, []string) {
	t.Helper()
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
	srv := exec.Command(drfsBin, append([]string{"target", "serve", "--dir", t.TempDir(), "--listen", addr,
		"--cert", srvCert, "--key", srvKey, "--client-ca", ca}, args...)...)
	srv.Stderr = log.f
	srv.Env = append(os.Environ(), env...)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if srv.ProcessState == nil {
			srv.Process.Kill()
			srv.Wait()
		}
	})
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if i > 200 {
			t.Fatalf("target serve not listening:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return srv, addr, []string{"--tls-cert", aCert, "--tls-key", aKey, "--tls-ca", ca}
}

// notTLS opens a connection to addr and sends what is not TLS: the server
// logs a failed handshake as a warning.
func notTLS(t *testing.T, addr string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x00\x01 this is not TLS\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c.Read(make([]byte, 64))
	c.Close()
}

// stopServe ends a target serve with SIGTERM.
func stopServe(t *testing.T, srv *exec.Cmd, log *logFile) {
	t.Helper()
	srv.Process.Signal(syscall.SIGTERM)
	if err := srv.Wait(); err != nil {
		t.Fatalf("target serve after SIGTERM: %v\n%s", err, log)
	}
}

// TestLogTargetServeJournal: drfs target serve, its standard error the
// journal's stream, writes lines without a time that start with the
// priority of their level (<6> info, <4> warning), and --log-level warn,
// into a plain file, keeps the warnings only, with their time.
func TestLogTargetServeJournal(t *testing.T) {
	log := newLogFile(t)
	srv, addr, tls := serveLogged(t, log, []string{log.journal(t)})
	log.wait(t, `^<6>INFO drfs target: serving dir=\S+ addr=`+regexp.QuoteMeta(addr)+`$`, 10*time.Second)
	if out, err := drfsRun(t, append([]string{"points", "--target", "https://" + addr}, tls...)...); err != nil {
		t.Fatalf("drfs points: %v\n%s", err, out)
	}
	log.wait(t, `^<6>INFO remote: connection addr=127\.0\.0\.1:\d+ identity=\S+$`, 10*time.Second)
	notTLS(t, addr)
	log.wait(t, `^<4>WARN .*TLS handshake error`, 10*time.Second)
	stopServe(t, srv, log)
	out := log.String()
	checkShape(t, out, journalLine)
	if !strings.HasSuffix(out, "<6>INFO drfs target: stopped; stores closed cleanly\n") {
		t.Errorf("no clean stop at the end:\n%s", out)
	}

	// Warnings only; the file is no journal stream, even with the
	// variable set (a process that inherits it from a service, say).
	plain := newLogFile(t)
	srv, addr, _ = serveLogged(t, plain, []string{log.journal(t), "DRFS_LOG_LEVEL=error"}, "--log-level", "warn")
	notTLS(t, addr)
	plain.wait(t, `WARN .*TLS handshake error`, 10*time.Second)
	stopServe(t, srv, plain)
	out = plain.String()
	checkShape(t, out, terminalLine)
	if strings.Contains(out, "INFO") || strings.Contains(out, "serving") {
		t.Errorf("--log-level warn logged info:\n%s", out)
	}
}

// TestLogMountJournal: drfs mount into the journal's stream: recovery
// points at <6>, a disk changed behind the mount's back at <4>, and the
// error it ends with when its mount is removed from outside at <3>.
func TestLogMountJournal(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	tgt := "dir://" + filepath.Join(filepath.Dir(d.src), "target")
	log := newLogFile(t)
	cmd := exec.Command(drfsBin, "mount", d.src, d.mnt, "--state", d.state, "--target", tgt, "--interval", "1s", "--resync-window", "never")
	cmd.Stderr = log.f
	cmd.Env = append(os.Environ(), log.journal(t))
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
	for deadline := time.Now().Add(20 * time.Second); !isMounted(d.mnt) || !socketUp(d.state); time.Sleep(20 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("drfs mount exited early: %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("drfs mount not ready after 20s\n%s", log)
		}
	}
	log.wait(t, `^<6>INFO `+regexp.QuoteMeta(d.src)+` mounted at `, 10*time.Second)
	rng := rand.New(rand.NewPCG(seed(t), 9))
	writeRandom(t, rng, filepath.Join(d.mnt, "vm1", "disk.img"), 64<<20, 4)
	log.wait(t, `^<6>INFO vm1: recovery point \d+ on target: [1-9]\d* block`, 30*time.Second)
	// Well after the mount's last change: a write behind its back within
	// a tick of the kernel's clock (the ctime's) could pass for the mount's.
	time.Sleep(time.Second)
	behindBack(t, rng, filepath.Join(d.src, "vm1", "disk.img"), 64<<20, 2)
	log.wait(t, `^<4>WARN vm1/disk\.img: resynchronization required: changed outside the mount while mounted: `, 30*time.Second)

	if out, err := exec.Command("fusermount3", "-u", d.mnt).CombinedOutput(); err != nil {
		t.Fatalf("fusermount3 -u: %v: %s", err, out)
	}
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("drfs mount did not exit after its mount was removed:\n%s", log)
	}
	out := log.String()
	if err == nil {
		t.Errorf("drfs mount exited 0 after its mount was removed from outside:\n%s", out)
	}
	checkShape(t, out, journalLine)
	if !strings.Contains(out, "\n<6>INFO unmounted; change log closed cleanly\n") {
		t.Errorf("no clean close at <6>:\n%s", out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "<3>ERROR the mount at "+d.mnt+" was removed from outside drfs") {
		t.Errorf("last line %q is not the error at <3>:\n%s", last, out)
	}
}
