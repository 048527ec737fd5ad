package main

import (
	"context"
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
	"github.com/drfs-project/drfs/orchestrator"
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

// fillUp writes to the file at path (created if need be) until the file
// system it is on has no room left, and returns how much it wrote.
func fillUp(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	for _, chunk := range []int{1 << 20, 4096} {
		buf := make([]byte, chunk)
		for {
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			if err != nil {
				t.Fatalf("filling %s: %v", path, err)
			}
		}
	}
	if err := f.Sync(); err != nil && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s: %v", path, err)
	}
	return n
}

// spendReserve fills the state directory of a running mount or agent
// whose VM vm writes to disk: a filler file takes the free space, a write
// through the mount (or a rotation) then finds no room for its records,
// which releases the reserve, and a second filler takes the reserve's room
// too. It
// returns the fillers, which the caller removes to give the space back.
// The generations shipped meanwhile give a little space back as they are
// dropped, which the second filler takes until a while (longer than the
// VM's interval) passes with none.
func spendReserve(t *testing.T, state, vm, disk string) []string {
	t.Helper()
	reserve := filepath.Join(state, "reserve")
	if st, err := os.Stat(reserve); err != nil || st.Size() == 0 {
		t.Fatalf("no reserve in the state directory before it is full: %v", err)
	}
	fillers := []string{filepath.Join(state, "filler1"), filepath.Join(state, "filler2")}
	fillUp(t, fillers[0])
	if _, err := os.Stat(reserve); err != nil {
		t.Fatalf("the reserve was released before the change log ran out of space: %v", err)
	}
	// The VM's writes go on; the change log has no room for them.
	writeRandomMiB(t, disk, 0, 4)
	waitMount(t, state, vm, "with its state directory full", 30*time.Second, func(r control.Replication) bool { return r.StateFull != "" })
	if _, err := os.Stat(reserve); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the reserve is still there with the state directory full: %v", err)
	}
	fillUp(t, fillers[1])
	for i := 0; ; i++ {
		time.Sleep(3 * time.Second)
		if fillUp(t, fillers[1]) == 0 {
			break
		}
		if i == 10 {
			t.Fatalf("the state directory keeps getting space back while full")
		}
	}
	return fillers
}

// removeFillers gives the space of spendReserve's fillers back.
func removeFillers(t *testing.T, fillers []string) {
	t.Helper()
	for _, f := range fillers {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
}

// checkCleanClose fails the test if a process's output does not say its
// change log closed cleanly, or says it died.
func checkCleanClose(t *testing.T, what, out, closed string) {
	t.Helper()
	if !strings.Contains(out, closed) {
		t.Errorf("%s: no %q:\n%s", what, closed, out)
	}
	for _, bad := range []string{"panic:", "pebble: fatal", "MANIFEST", "DATA RACE", "fatal error:"} {
		if strings.Contains(out, bad) {
			t.Errorf("%s: %q in its output:\n%s", what, bad, out)
		}
	}
}

// TestStateFullAgentUnprotect: an agent whose state directory is full,
// with the reserve already spent, cannot save its state file. drfs
// unprotect then fails, saying why, and the VM stays protected, also
// after a restart (which would otherwise have brought it back with its
// replication half taken apart). While full, the VM is Critical with
// "state directory full", drfs status --check exits 4 and
// drfs_state_dir_full is 1. SIGTERM stops the full agent cleanly; with the
// space back it starts again with the VM protected, and the unprotect
// goes through.
func TestStateFullAgentUnprotect(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	// Room enough for drfs protect, which wants 64 MiB free.
	stateTmpfs(t, d.state, "96m")
	top := filepath.Dir(d.state)
	tgt := "dir://" + filepath.Join(top, "target")
	socket := filepath.Join(top, "agent.sock")
	args := []string{"--target", tgt, "--resync-window", "never", "--metrics-listen", "127.0.0.1:0"}
	a := startAgent(t, d, socket, args...)
	if out, err := drfsRun(t, "protect", "vm1", "--interval", "2s", "--wait", "--socket", socket); err != nil {
		t.Fatalf("drfs protect vm1: %v\n%s", err, out)
	}
	waitCut(t, d.state, "vm1", time.Now())
	if body := scrapeMetrics(t, a); !strings.Contains(string(body), "\ndrfs_state_dir_full 0\n") {
		t.Errorf("metrics lack drfs_state_dir_full 0 before the state directory is full:\n%s", body)
	}

	fillers := spendReserve(t, d.state, "vm1", filepath.Join(d.mnt, "vm1", "disk.img"))
	v := vmStatus(t, socket, "vm1")
	if !v.StateFull || v.Health.Level != orchestrator.Critical || !strings.Contains(v.Health.Reason, "state directory full") {
		t.Errorf("vm1 with the state directory full: state_dir_full %v, health %v", v.StateFull, v.Health)
	}
	out, err := drfsRun(t, "status", "--check", "--socket", socket)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitCrit || !strings.Contains(out, "state directory full") {
		t.Errorf("drfs status --check with the state directory full: %v, want exit %d saying so:\n%s", err, exitCrit, out)
	}
	if body := scrapeMetrics(t, a); !strings.Contains(string(body), "\ndrfs_state_dir_full 1\n") {
		t.Errorf("metrics lack drfs_state_dir_full 1:\n%s", body)
	}

	out, err = drfsRun(t, "unprotect", "vm1", "--socket", socket)
	if err == nil {
		t.Fatalf("drfs unprotect vm1 succeeded with its state file unsaved:\n%s", out)
	}
	for _, want := range []string{"cannot unprotect vm1", "no space left on device", "stays protected"} {
		if !strings.Contains(out, want) {
			t.Errorf("drfs unprotect vm1 with the state directory full does not say %q:\n%s", want, out)
		}
	}
	// Protected: its disk, flagged by the write that found no room, waits
	// for a resync.
	if v := vmStatus(t, socket, "vm1"); v.State == orchestrator.Unprotected || !v.StateFull {
		t.Errorf("vm1 after an unprotect that failed: %s, state_dir_full %v", v.State, v.StateFull)
	}

	// Stopped while full, the agent closes cleanly. With the space back it
	// starts again, vm1 still protected, the state directory no longer
	// full.
	a.stop(t)
	checkCleanClose(t, "the agent stopped with its state directory full", a.stderr.String(), "agent stopped; change log closed cleanly")
	removeFillers(t, fillers)
	a = startAgent(t, d, socket, args...)
	v = vmStatus(t, socket, "vm1")
	if v.State == orchestrator.Unprotected {
		t.Errorf("vm1 is %s after a restart that followed the unprotect that failed", v.State)
	}
	if v.StateFull || v.Health.Level == orchestrator.Critical && strings.Contains(v.Health.Reason, "state directory full") {
		t.Errorf("vm1 after a restart with the space back: state_dir_full %v, health %v", v.StateFull, v.Health)
	}
	if body := scrapeMetrics(t, a); !strings.Contains(string(body), "\ndrfs_state_dir_full 0\n") {
		t.Errorf("metrics lack drfs_state_dir_full 0 once space is back:\n%s", body)
	}
	if out, err := drfsRun(t, "unprotect", "vm1", "--socket", socket); err != nil {
		t.Errorf("drfs unprotect vm1 once space is back: %v\n%s", err, out)
	}
	a.stop(t)
	checkCleanClose(t, "the agent", a.stderr.String(), "agent stopped; change log closed cleanly")
	a = startAgent(t, d, socket, args...)
	if v := vmStatus(t, socket, "vm1"); v.State != orchestrator.Unprotected {
		t.Errorf("vm1 is %s after a restart that followed its unprotect", v.State)
	}
	a.stop(t)
}

// TestStateFullMountStop: a mount whose state directory is full, its
// reserve spent, when SIGTERM comes exits 0 saying its change log closed
// cleanly (no fatal error of the index, no panic). With the space back it
// starts again, the disk written while full still flagged, and once that
// disk is resynchronized a later write reaches the target.
func TestStateFullMountStop(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	stateTmpfs(t, d.state, "24m")
	tgt := "dir://" + filepath.Join(t.TempDir(), "tgt")
	args := []string{"--target", tgt, "--interval", "2s", "--resync-window", "never"}
	m := startMount(t, d.src, d.mnt, d.state, args...)
	waitCut(t, d.state, "vm1", time.Now())

	disk := filepath.Join(d.mnt, "vm1", "disk.img")
	fillers := spendReserve(t, d.state, "vm1", disk)
	// The VM's writes go on while the state directory is full.
	writeRandomMiB(t, disk, 8<<20, 2)
	out, err := drfsRun(t, "status", d.state, "--check")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitCrit || !strings.Contains(out, "CRITICAL: state directory full") {
		t.Fatalf("drfs status --check just before SIGTERM: %v, want exit %d:\n%s", err, exitCrit, out)
	}
	m.stop(t)
	checkCleanClose(t, "the mount stopped with its state directory full", m.stderr.String(), "unmounted; change log closed cleanly")

	// Space back: it starts again, the condition gone, the disk flagged.
	removeFillers(t, fillers)
	m = startMount(t, d.src, d.mnt, d.state, args...)
	if out, err := drfsRun(t, "status", d.state, "--check"); err != nil || strings.Contains(out, "state directory full") {
		t.Errorf("drfs status --check after a restart with the space back: %v\n%s", err, out)
	}
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); !ds.Resync {
		t.Errorf("the disk written while the state directory was full is not flagged after a restart: %+v", ds)
	}

	// The flagged disk is resynchronized, and a later write replicated.
	if out, err := drfsRun(t, "resync", d.state, "vm1", "--now"); err != nil {
		t.Fatalf("drfs resync --now: %v\n%s", err, out)
	}
	waitStderr(t, m, `vm1/disk.img: resync against point`, 1, 60*time.Second)
	deadline := time.Now().Add(60 * time.Second)
	for diskStatus(t, logStatus(t, d.state), "vm1", "disk.img").Resync {
		if time.Now().After(deadline) {
			t.Fatalf("the disk is still flagged 60s after drfs resync --now:\n%s", m.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
	writeRandomMiB(t, disk, 32<<20, 1)
	waitCut(t, d.state, "vm1", time.Now())
	if ds := diskStatus(t, logStatus(t, d.state), "vm1", "disk.img"); ds.Resync {
		t.Errorf("the disk is flagged again after the resync: %+v", ds)
	}
	m.stop(t)
	checkCleanClose(t, "the mount", m.stderr.String(), "unmounted; change log closed cleanly")
	src, err := os.ReadFile(filepath.Join(d.src, "vm1", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	restoreAndCompare(t, tgt, "vm1", "latest", map[string][]byte{"disk.img": src})
}

// TestStateFullRestart: a mount started on a state directory that is still
// full (its reserve released by the run before) refuses at once, with an
// error that says so and how much room it needs, rather than hang in the
// index's open (Pebble retries a failed flush without end); with room
// given back it starts, and then says whether the directory is full.
func TestStateFullRestart(t *testing.T) {
	needFUSE(t)
	d := newDirs(t)
	stateTmpfs(t, d.state, "24m")
	tgt := "dir://" + filepath.Join(t.TempDir(), "tgt")
	args := []string{"--target", tgt, "--interval", "2s", "--resync-window", "never"}
	m := startMount(t, d.src, d.mnt, d.state, args...)
	waitCut(t, d.state, "vm1", time.Now())
	fillers := spendReserve(t, d.state, "vm1", filepath.Join(d.mnt, "vm1", "disk.img"))
	m.stop(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, drfsBin, append([]string{"mount", d.src, d.mnt, "--state", d.state}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if ctx.Err() != nil {
		t.Fatalf("drfs mount on a full state directory did not return within 60s:\n%s", out)
	}
	if !errors.As(err, &ee) || !strings.Contains(string(out), "is full") || !strings.Contains(string(out), "give it more room") {
		t.Fatalf("drfs mount on a full state directory: %v, want a failure that says it is full:\n%s", err, out)
	}
	t.Logf("refused: %s", strings.TrimSpace(string(out)))
	if isMounted(d.mnt) {
		t.Fatal("mounted although it said it failed")
	}

	removeFillers(t, fillers)
	m = startMount(t, d.src, d.mnt, d.state, args...)
	waitMount(t, d.state, "vm1", "out of the full state", 30*time.Second, func(r control.Replication) bool { return r.StateFull == "" })
	m.stop(t)
	checkCleanClose(t, "the mount", m.stderr.String(), "unmounted; change log closed cleanly")
}
