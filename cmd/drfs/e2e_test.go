package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/drfs-project/drfs/tracker"
)

// drfsBin is the binary under test, built once by TestMain.
var drfsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drfs-e2e-bin")
	if err != nil {
		panic(err)
	}
	drfsBin = filepath.Join(dir, "drfs")
	if out, err := exec.Command("go", "build", "-race", "-o", drfsBin, ".").CombinedOutput(); err != nil {
		// Without the race detector where it is not supported.
		if out2, err2 := exec.Command("go", "build", "-o", drfsBin, ".").CombinedOutput(); err2 != nil {
			fmt.Fprintf(os.Stderr, "building drfs: %v\n%s\n%s", err2, out, out2)
			os.Exit(2)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts (CI runs as root)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

// drfsRun runs the binary to completion and returns its combined output.
func drfsRun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(drfsBin, args...).CombinedOutput()
	return string(out), err
}

// mounted is a running `drfs mount` process.
type mounted struct {
	cmd    *exec.Cmd
	mnt    string
	stderr *syncBuffer
	done   chan error
}

// syncBuffer is a bytes.Buffer that a process writes while a test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func isMounted(path string) bool {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == path {
			return true
		}
	}
	return false
}

// startMount starts `drfs mount` and waits until the mount is up.
func startMount(t *testing.T, src, mnt, state string, extra ...string) *mounted {
	t.Helper()
	args := append([]string{"mount", src, mnt, "--state", state}, extra...)
	m := &mounted{cmd: exec.Command(drfsBin, args...), mnt: mnt,
		stderr: &syncBuffer{}, done: make(chan error, 1)}
	m.cmd.Stderr = m.stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for !isMounted(mnt) || !socketUp(state) {
		select {
		case err := <-m.done:
			t.Fatalf("drfs mount exited early: %v\n%s", err, m.stderr)
		default:
		}
		if time.Now().After(deadline) {
			m.cmd.Process.Kill()
			t.Fatalf("drfs mount not ready after 20s\n%s", m.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			m.cmd.Process.Kill()
			<-m.done
		}
		if isMounted(mnt) {
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return m
}

func socketUp(state string) bool {
	_, err := os.Stat(filepath.Join(state, "control.sock"))
	return err == nil
}

// stop sends SIGTERM and expects a clean exit with the mount gone.
func (m *mounted) stop(t *testing.T) {
	t.Helper()
	m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-m.done:
		if err != nil {
			t.Fatalf("drfs mount exited with %v after SIGTERM\n%s", err, m.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("drfs mount did not exit after SIGTERM\n%s", m.stderr)
	}
	if isMounted(m.mnt) {
		t.Fatalf("%s still mounted after drfs exited", m.mnt)
	}
}

// kill sends SIGKILL and cleans the dead mount up, as an operator would.
func (m *mounted) kill(t *testing.T) {
	t.Helper()
	m.cmd.Process.Kill()
	<-m.done
	if out, err := exec.Command("umount", "-l", m.mnt).CombinedOutput(); err != nil {
		t.Logf("umount -l %s: %v: %s", m.mnt, err, out)
	}
}

func logStatus(t *testing.T, state string) []tracker.VMStatus {
	t.Helper()
	out, err := exec.Command(drfsBin, "log", state, "--json").Output()
	if err != nil {
		t.Fatalf("drfs log --json: %v", err)
	}
	var st []tracker.VMStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("drfs log --json: %v\n%s", err, out)
	}
	return st
}

func diskStatus(t *testing.T, st []tracker.VMStatus, vm, disk string) tracker.DiskStatus {
	t.Helper()
	for _, v := range st {
		if v.Name != vm {
			continue
		}
		for _, d := range v.Disks {
			if d.Name == disk {
				return d
			}
		}
	}
	t.Fatalf("no disk %s/%s in the log status %+v", vm, disk, st)
	return tracker.DiskStatus{}
}

type dirs struct{ src, mnt, state string }

func newDirs(t *testing.T) dirs {
	base := t.TempDir()
	d := dirs{filepath.Join(base, "src"), filepath.Join(base, "mnt"), filepath.Join(base, "state")}
	os.MkdirAll(filepath.Join(d.src, "vm1"), 0o755)
	os.MkdirAll(d.mnt, 0o755)
	f, err := os.Create(filepath.Join(d.src, "vm1", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	return d
}

// TestMountBadInput: every bad argument gets a one-line error, a non-zero
// exit, and nothing is created or changed.
func TestMountBadInput(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	file := filepath.Join(d.src, "vm1", "disk.img")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"source missing", []string{"mount", d.src + "-nope", d.mnt, "--state", d.state}, "source"},
		{"source is a file", []string{"mount", file, d.mnt, "--state", d.state}, "not a directory"},
		{"mountpoint missing", []string{"mount", d.src, d.mnt + "-nope", "--state", d.state}, "mount point"},
		{"state inside source", []string{"mount", d.src, d.mnt, "--state", filepath.Join(d.src, "st")}, "inside the source"},
		{"no state", []string{"mount", d.src, d.mnt}, "--state"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := drfsRun(t, c.args...)
			if err == nil {
				t.Fatalf("drfs %v succeeded; want an error", c.args)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("drfs %v: error %q does not mention %q", c.args, out, c.want)
			}
			if _, err := os.Stat(d.state); err == nil {
				t.Errorf("drfs %v created the state directory", c.args)
			}
		})
	}

	t.Run("mountpoint busy", func(t *testing.T) {
		m := startMount(t, d.src, d.mnt, d.state)
		other := filepath.Join(t.TempDir(), "state2")
		out, err := drfsRun(t, "mount", d.src, d.mnt, "--state", other)
		if err == nil || !strings.Contains(out, "mount") {
			t.Fatalf("second mount on a busy mountpoint: err %v, output %q", err, out)
		}
		if _, err := os.Stat(other); err == nil {
			t.Errorf("the refused mount created its state directory")
		}
		m.stop(t)
	})

	t.Run("state of another source", func(t *testing.T) {
		src2 := filepath.Join(t.TempDir(), "src2")
		os.MkdirAll(src2, 0o755)
		out, err := drfsRun(t, "mount", src2, d.mnt, "--state", d.state)
		if err == nil || !strings.Contains(out, "src") {
			t.Fatalf("mount with the state of another source: err %v, output %q", err, out)
		}
		if lines := strings.Count(strings.TrimSpace(out), "\n"); lines > 0 {
			t.Errorf("error is %d lines, want one: %q", lines+1, out)
		}
	})
}

// TestMountLogUnmount: writes through the binary's mount show in `drfs log`,
// SIGTERM unmounts cleanly, and a clean remount flags nothing.
func TestMountLogUnmount(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	m := startMount(t, d.src, d.mnt, d.state)
	out, err := exec.Command("dd", "if=/dev/urandom", "of="+filepath.Join(d.mnt, "vm1", "disk.img"),
		"bs=4k", "count=10", "seek=100", "conv=notrunc,fsync").CombinedOutput()
	if err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}
	if out, err := drfsRun(t, "rotate", d.state, "vm1"); err != nil {
		t.Fatalf("drfs rotate: %v: %s", err, out)
	}
	st := logStatus(t, d.state)
	var blocks uint64
	for _, v := range st {
		for _, g := range v.Generations {
			for _, gd := range g.Disks {
				blocks += gd.DataBlocks
			}
		}
	}
	if blocks != 10 {
		t.Errorf("log holds %d data blocks after a 10-block dd, want 10: %+v", blocks, st)
	}
	if ds := diskStatus(t, st, "vm1", "disk.img"); ds.Resync {
		t.Errorf("disk flagged for resync on a fresh mount: %s", ds.Reason)
	}
	m.stop(t)
	if !strings.Contains(m.stderr.String(), "closed cleanly") {
		t.Errorf("no clean-close message: %s", m.stderr)
	}
	// Offline read of the same log.
	text, err := drfsRun(t, "log", d.state)
	if err != nil || !strings.Contains(text, "disk.img") {
		t.Fatalf("drfs log offline: %v\n%s", err, text)
	}
	m = startMount(t, d.src, d.mnt, d.state)
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.Resync {
		t.Errorf("disk flagged after a clean unmount and remount: %s", ds.Reason)
	}
	m.stop(t)
}

// TestKillNine: SIGKILL in the middle of writes. On the next mount every
// write acknowledged before the kill is in the log, and the disk is not
// flagged for resynchronization: the mount recovered from its in-flight
// table and says so.
func TestKillNine(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	m := startMount(t, d.src, d.mnt, d.state)
	f, err := os.OpenFile(filepath.Join(d.mnt, "vm1", "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Each write fills one block with its sequence number.
	var acked atomic.Int64
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 4096)
		for i := int64(0); i < 16384; i++ {
			for j := 0; j < len(buf); j += 8 {
				binary.LittleEndian.PutUint64(buf[j:], uint64(i+1))
			}
			if _, err := f.WriteAt(buf, i*4096); err != nil {
				return
			}
			acked.Store(i + 1)
		}
	}()
	for acked.Load() < 500 {
		time.Sleep(time.Millisecond)
	}
	m.kill(t)
	<-stopped
	f.Close()
	n := acked.Load()
	t.Logf("%d writes acknowledged before SIGKILL", n)
	// drfs log on the dead mount's state: nothing flagged, the recovery
	// pending.
	if out, err := drfsRun(t, "log", d.state); err != nil || !strings.Contains(out, "recovers it from its in-flight table") || strings.Contains(out, "REQUIRED") {
		t.Errorf("drfs log after SIGKILL, before the restart: %v\n%s", err, out)
	}

	m = startMount(t, d.src, d.mnt, d.state)
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.Resync {
		t.Errorf("disk flagged for resynchronization after SIGKILL: %s", ds.Reason)
	}
	if line := findLine(m.stderr.String(), "in-flight table"); line == "" {
		t.Errorf("the mount did not say how it recovered:\n%s", m.stderr)
	} else {
		t.Log(line)
	}
	if out, err := drfsRun(t, "rotate", d.state, "vm1"); err != nil {
		t.Fatalf("drfs rotate: %v: %s", err, out)
	}
	m.stop(t)

	log, err := tracker.Open(tracker.Options{Dir: d.state, Source: d.src, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	seen := map[uint64]bool{}
	for _, gen := range log.Frozen("vm1") {
		err := log.ReadGeneration("vm1", gen, func(r tracker.Record) error {
			if r.Kind != tracker.KindData {
				return nil
			}
			for k := 0; k+4096 <= len(r.Data); k += 4096 {
				b := r.Block + uint64(k/4096)
				if got := binary.LittleEndian.Uint64(r.Data[k:]); got == b+1 {
					seen[b] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(0); i < n; i++ {
		if !seen[uint64(i)] {
			t.Fatalf("acknowledged write %d (block %d) is not in the log", i+1, i)
		}
	}
}

// TestEditedOutsideMount: a disk changed while not mounted is flagged at the
// next mount.
func TestEditedOutsideMount(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	m := startMount(t, d.src, d.mnt, d.state)
	if err := os.WriteFile(filepath.Join(d.mnt, "vm1", "other.img"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, _ := os.OpenFile(filepath.Join(d.mnt, "vm1", "disk.img"), os.O_RDWR, 0)
	f.WriteAt([]byte("x"), 0)
	f.Close()
	m.stop(t)
	// Behind drfs's back.
	f, err := os.OpenFile(filepath.Join(d.src, "vm1", "disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("behind the tracker's back"), 12345)
	f.Close()
	m = startMount(t, d.src, d.mnt, d.state)
	st := logStatus(t, d.state)
	if ds := diskStatus(t, st, "vm1", "disk.img"); !ds.Resync {
		t.Errorf("disk edited outside the mount is not flagged")
	} else {
		t.Logf("flagged: %s", ds.Reason)
	}
	if ds := diskStatus(t, st, "vm1", "other.img"); ds.Resync {
		t.Errorf("untouched disk flagged: %s", ds.Reason)
	}
	m.stop(t)
}
