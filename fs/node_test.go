package fs

import (
	"errors"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRenameUnlink: renames and unlinks are reported with paths relative to
// the source; a disk keeps its recorder (and its changes) across renames.
func TestRenameUnlink(t *testing.T) {
	tm := newTestMount(t, mountConfig{})
	if err := os.Mkdir(tm.path("vm1"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(tm.path("vm1/a.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	d := tm.rec.mustDisk(t, "vm1/a.img")
	if err := os.Rename(tm.path("vm1/a.img"), tm.path("vm1/b.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tm.path("vm1"), tm.path("vm2")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("after"), 6); err != nil {
		t.Fatal(err)
	}
	if got := tm.rec.disk("vm2/b.img"); got != d {
		t.Errorf("after renames, vm2/b.img has disk %p, want %p", got, d)
	}
	if err := os.WriteFile(tm.path("vm2/c.img"), []byte("c"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tm.path("vm2/c.img")); err != nil {
		t.Fatal(err)
	}
	// RENAME_EXCHANGE cannot be told to a Recorder: refused.
	if err := os.WriteFile(tm.path("vm2/x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tm.path("vm2/b.img"), unix.AT_FDCWD, tm.path("vm2/x"), unix.RENAME_EXCHANGE)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("RENAME_EXCHANGE: %v, want EINVAL", err)
	}

	tm.rec.mu.Lock()
	renames, removed := slices.Clone(tm.rec.renames), slices.Clone(tm.rec.removed)
	tm.rec.mu.Unlock()
	if want := [][2]string{{"vm1/a.img", "vm1/b.img"}, {"vm1", "vm2"}}; !slices.Equal(renames, want) {
		t.Errorf("Renamed %v, want %v", renames, want)
	}
	if want := []string{"vm2/c.img"}; !slices.Equal(removed, want) {
		t.Errorf("Removed %v, want %v", removed, want)
	}
}

// TestReleaseOnForget: once the kernel forgets an inode (here: unlinked and
// closed) its DiskRecorder is released; the rest are released at unmount
// (checked by the mount's cleanup).
func TestReleaseOnForget(t *testing.T) {
	tm := newTestMount(t, mountConfig{})
	for _, name := range []string{"gone", "kept"} {
		if err := os.WriteFile(tm.path(name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gone := tm.rec.mustDisk(t, "gone")
	kept := tm.rec.mustDisk(t, "kept")
	if err := os.Remove(tm.path("gone")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); gone.releaseCount() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the disk of an unlinked, closed file was not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := kept.releaseCount(); n != 0 {
		t.Errorf("a live disk was released %d times", n)
	}
}

// TestFifoOpenTrunc: O_TRUNC on a FIFO is ignored, as on any file system.
func TestFifoOpenTrunc(t *testing.T) {
	tm := newTestMount(t, mountConfig{})
	if err := unix.Mkfifo(tm.path("fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(tm.path("fifo"), unix.O_RDWR|unix.O_TRUNC, 0)
	if err != nil {
		t.Fatalf("open FIFO with O_TRUNC: %v", err)
	}
	unix.Close(fd)
	if d := tm.rec.disk("fifo"); d != nil {
		t.Error("a FIFO got a disk")
	}
}
