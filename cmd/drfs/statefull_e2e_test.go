package main

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/control"
)

// stateTmpfs mounts a tmpfs of size on the state directory d.state, and
// unmounts it when the test ends.
func stateTmpfs(t *testing.T, state, size string) {
	t.Helper()
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", state).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs on the state directory: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", state).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", state, err, out)
		}
	})
}

func freeSpace(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// writeRandomMiB writes n MiB of random data at off of the file at path,
// synced.
func writeRandomMiB(t *testing.T, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range n {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, off+int64(i)<<20); err != nil {
			t.Fatalf("write through the mount: %v", err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync through the mount: %v", err)
	}
}

func mountStates(t *testing.T, state string) []control.Replication {
	t.Helper()
	out, err := exec.Command(drfsBin, "status", state, "--json").Output()
	if err != nil {
		t.Fatalf("drfs status %s --json: %v", state, err)
	}
	var st []control.Replication
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("drfs status --json: %v\n%s", err, out)
	}
	return st
}

// waitMount waits until the status of vm satisfies ok.
func waitMount(t *testing.T, state, vm, what string, timeout time.Duration, ok func(control.Replication) bool) control.Replication {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range mountStates(t, state) {
			if r.VM == vm && ok(r) {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s within %v: %+v", vm, what, timeout, mountStates(t, state))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestStateFullMount is issue 17 through the built binary: a VM writes
// more than its small state directory holds. The status says "state
// directory full" (Critical: drfs status --check exits 4), the VM's writes
// go on, the flagged generation is shipped and dropped so that the space
// comes back and rotations succeed again, a resync makes the replica equal
// to the disk, and SIGTERM stops the mount cleanly, which starts again.
func TestStateFullMount(t *testing.T) {
	needFUSE(t)
	d := newDirsSize(t, 256<<20)
	stateTmpfs(t, d.state, "24m")
	tgt := "dir://" + filepath.Join(t.TempDir(), "tgt")
	// An interval long enough for the full state to be seen before the
	// generation that filled it is cut and shipped.
	m := startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "10s", "--resync-window", "never")
	waitCut(t, d.state, "vm1", time.Now())

	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	// The state directory is full for as long as the generation that
	// filled it takes to ship: watch the status while the VM writes.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		writeRandomMiB(t, disk, 0, 60)
	}()
	var sawFull, sawCheck bool
	full := int64(1 << 62)
	for done := false; !done || !sawFull; {
		select {
		case <-wrote:
			if !done {
				done = true
			}
		default:
		}
		for _, r := range mountStates(t, d.state) {
			if r.VM != "vm1" || r.StateFull == "" {
				continue
			}
			full = min(full, freeSpace(t, d.state))
			if !strings.Contains(r.StateFull, "state directory full") {
				t.Errorf("state_full: %q", r.StateFull)
			}
			sawFull = true
			out, err := drfsRun(t, "status", d.state, "--check")
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == exitCrit && strings.Contains(out, "CRITICAL: state directory full") {
				sawCheck = true
			}
		}
		if done && !sawFull {
			t.Fatalf("the state directory was never reported full:\n%s", m.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !sawCheck {
		t.Errorf("drfs status --check never exited %d with CRITICAL: state directory full", exitCrit)
	}
	ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img")
	if !ds.Resync || !strings.Contains(ds.Reason, "change log write failed") {
		t.Errorf("disk after the failed write: %+v", ds)
	}

	// The generation is shipped and dropped: the space comes back, and
	// rotations succeed again.
	waitMount(t, d.state, "vm1", "out of the full state", 60*time.Second, func(r control.Replication) bool { return r.StateFull == "" })
	if free := freeSpace(t, d.state); free < full+8<<20 {
		t.Errorf("free space %d once recovered, %d when full: the change log was not released", free, full)
	}
	t0 := time.Now()
	waitCut(t, d.state, "vm1", t0)
	if out, err := drfsRun(t, "status", d.state, "--check"); err != nil {
		t.Errorf("drfs status --check once recovered: %v\n%s", err, out)
	}
	if strings.Contains(m.stderr.String(), "creating the segment of generation") {
		t.Errorf("a rotation failed for lack of space:\n%s", m.stderr)
	}
	// Writes to the flagged disk are no longer logged.
	writeRandomMiB(t, disk, 100<<20, 4)
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.LogBytes != 0 {
		t.Errorf("the flagged disk's writes were logged: %+v", ds)
	}

	// A resync makes the replica equal to the disk again; later writes
	// are logged and shipped.
	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	waitStderr(t, m, `vm1/disk.img: resync against point`, 1, 60*time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for !hasSnapshotPoint(t, tgt) {
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot point after the resync:\n%s", m.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	writeRandomMiB(t, disk, 200<<20, 2)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
	if !strings.Contains(m.stderr.String(), "closed cleanly") {
		t.Errorf("no clean close:\n%s", m.stderr)
	}
	src, err := os.ReadFile(filepath.Join(d.src, "vm1", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", map[string][]byte{"disk.img": src})

	// It starts again on the same state directory.
	m = startMount(t, d.src, d.mnt, d.state, "--target", tgt, "--interval", "2s", "--resync-window", "never")
	writeRandomMiB(t, disk, 0, 1)
	waitCut(t, d.state, "vm1", time.Now())
	m.stop(t)
}

func hasSnapshotPoint(t *testing.T, tgt string) bool {
	for _, p := range points(t, tgt, "vm1") {
		if p.Kind == "snapshot" {
			return true
		}
	}
	return false
}
