package fs

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestTouched: every change through the mount that moves a disk's ctime
// without changing a byte is reported as Touched, with a handle or by
// path, on a disk opened through the mount or not yet.
func TestTouched(t *testing.T) {
	tm := newTestMount(t, mountConfig{setup: func(src string, _ *testRecorder) {
		os.Mkdir(filepath.Join(src, "vm"), 0o755)
		writeSource(t, src, "vm/disk.img", make([]byte, 1<<20))
	}})
	touched := func() int {
		tm.rec.mu.Lock()
		defer tm.rec.mu.Unlock()
		n := 0
		for _, d := range tm.rec.disks {
			d.mu.Lock()
			n += d.touched
			d.mu.Unlock()
		}
		return n
	}
	path := tm.path("vm/disk.img")
	step := func(what string, change func() error) {
		t.Helper()
		before := touched()
		if err := change(); errors.Is(err, unix.ENOTSUP) {
			t.Logf("%s: %v (the backing file system has no user xattrs)", what, err)
			return
		} else if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if touched() <= before {
			t.Errorf("%s through the mount was not reported as Touched", what)
		}
	}
	// By path, before anything opened the disk.
	step("chmod", func() error { return os.Chmod(path, 0o600) })
	step("utimes", func() error { return os.Chtimes(path, time.Now(), time.Now()) })
	step("chown", func() error { return os.Chown(path, 0, 0) })
	step("setxattr", func() error { return unix.Setxattr(path, "user.drfs", []byte("x"), 0) })
	step("removexattr", func() error { return unix.Removexattr(path, "user.drfs") })
	// Through a handle.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	step("fchmod", func() error { return f.Chmod(0o644) })
	step("fallocate KEEP_SIZE", func() error { return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20) })
}
