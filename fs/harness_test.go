package fs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// requireFUSE skips the test unless it can mount: root and /dev/fuse.
func requireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: a FUSE mount needs root (run the tests as root)")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("skipped: a FUSE mount needs /dev/fuse: %v", err)
	}
	f.Close()
}

// testMount is a drfs mount of a fresh source directory, with a
// testRecorder (unless made with noRecorder).
type testMount struct {
	src, mnt string
	rec      *testRecorder // nil without tracking
	srv      *Server
}

// mountConfig tunes newTestMount.
type mountConfig struct {
	blockSize  int  // of the test recorder; 0 means 4096
	noRecorder bool // mount without tracking
	opts       Options
	// setup runs before the mount, to fill the source or tune the
	// recorder.
	setup func(src string, rec *testRecorder)
}

// newTestMount mounts a drfs loopback of a new directory on another new
// directory. Cleanup unmounts it, checks that no mount is left behind, and
// verifies the recorder: every disk released once, every shadow equal to
// its backing file.
func newTestMount(t testing.TB, cfg mountConfig) *testMount {
	t.Helper()
	requireFUSE(t)
	dir := t.TempDir()
	tm := &testMount{src: filepath.Join(dir, "src"), mnt: filepath.Join(dir, "mnt")}
	for _, d := range []string{tm.src, tm.mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var rec Recorder
	if !cfg.noRecorder {
		bs := cfg.blockSize
		if bs == 0 {
			bs = 4096
		}
		tm.rec = newTestRecorder(t, tm.src, bs)
		rec = tm.rec
	}
	if cfg.setup != nil {
		cfg.setup(tm.src, tm.rec)
	}
	srv, err := Mount(tm.src, tm.mnt, rec, cfg.opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	tm.srv = srv
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
			// Leave no mount behind, whatever the test did.
			syscall.Unmount(tm.mnt, unix.MNT_DETACH)
			srv.Wait()
		}
		if busy, err := isMountPoint(tm.mnt); err != nil || busy {
			t.Errorf("mount left behind on %s (%v)", tm.mnt, err)
		}
		if tm.rec != nil {
			tm.rec.verify(t)
		}
	})
	return tm
}

// path returns the path of rel in the mount.
func (tm *testMount) path(rel string) string { return filepath.Join(tm.mnt, rel) }

// backing returns the path of rel in the source.
func (tm *testMount) backing(rel string) string { return filepath.Join(tm.src, rel) }

// writeSource writes a file straight into the source directory.
func writeSource(t testing.TB, src, rel string, data []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(src, rel), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// randomBytes returns n bytes from rng.
func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// alignedBuffer returns n bytes aligned for O_DIRECT, filled from rng.
func alignedBuffer(t testing.TB, rng *rand.Rand, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	copy(b, randomBytes(rng, n))
	return b
}

// readFile reads a file and fails the test on error.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameEvents fails the test unless got equals want.
func sameEvents(t testing.TB, what string, got, want []event) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: events %v, want %v", what, got, want)
		return
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("%s: events %v, want %v", what, got, want)
			return
		}
	}
}

// equalBytes fails the test unless the mount shows want at path.
func equalBytes(t testing.TB, path string, want []byte) {
	t.Helper()
	got := readFile(t, path)
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %s", path, firstDiff(got, want))
	}
}
