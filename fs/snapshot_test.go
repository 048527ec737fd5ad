package fs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// sparseImage returns n bytes of random data with runs of zeros, and
// writes it to rel in src with holes where the runs are.
func sparseImage(t *testing.T, rng *rand.Rand, src, rel string, n int) []byte {
	t.Helper()
	data := randomBytes(rng, n)
	f, err := os.Create(filepath.Join(src, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		off, l := rng.IntN(n), 4096+rng.IntN(64<<10)
		l = min(l, n-off)
		clear(data[off : off+l])
		if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(l)); err != nil {
			t.Fatal(err)
		}
	}
	return data
}

// checkView fails the test unless v reads as want, whole and at its end,
// and its extents cover every non-zero byte of want.
func checkView(t *testing.T, name string, v *View, want []byte) {
	t.Helper()
	if v.Size() != int64(len(want)) {
		t.Errorf("%s: Size %d, want %d", name, v.Size(), len(want))
	}
	got := make([]byte, len(want)+100)
	n, err := v.ReadAt(got, 0)
	if n != len(want) || err != io.EOF {
		t.Errorf("%s: ReadAt whole = %d, %v; want %d, EOF", name, n, err, len(want))
	}
	if !bytes.Equal(got[:n], want) {
		t.Errorf("%s: %s", name, firstDiff(got[:n], want))
	}
	if n, err := v.ReadAt(got[:1], int64(len(want))); n != 0 || err != io.EOF {
		t.Errorf("%s: ReadAt at the end = %d, %v", name, n, err)
	}
	ext, err := v.Extents()
	if err != nil {
		t.Fatalf("%s: Extents: %v", name, err)
	}
	covered := make([]bool, len(want))
	var end int64 = -1
	var listed int64
	for _, e := range ext {
		if e.Off <= end || e.Len <= 0 || e.Off+e.Len > int64(len(want)) {
			t.Fatalf("%s: extents not sorted, disjoint and within the size: %v", name, ext)
		}
		end = e.Off + e.Len
		listed += e.Len
		for i := e.Off; i < end; i++ {
			covered[i] = true
		}
	}
	for i, c := range want {
		if c != 0 && !covered[i] {
			t.Fatalf("%s: byte %d is %#x but outside the extents %v", name, i, c, ext)
		}
	}
	t.Logf("%s: %d bytes, %d extents listing %d bytes", name, len(want), len(ext), listed)
}

// TestSnapshotRandom takes a snapshot of two disks while quiesced (one
// open at the time, one opened later), copies them from the source, then
// runs random writes (buffered and O_DIRECT), punches, zero ranges,
// collapses and inserts, truncates, copies and writes through shared
// mappings from several goroutines, while readers check random ranges of
// the views against the copies. At the end each view must equal its copy
// and its extents cover it; after Delete the files are gone and no disk
// carries the snapshot.
func TestSnapshotRandom(t *testing.T) {
	for _, bs := range []int{4096, 512} {
		t.Run(fmt.Sprintf("block=%d", bs), func(t *testing.T) { testSnapshotRandom(t, bs) })
	}
}

func testSnapshotRandom(t *testing.T, bs int) {
	const (
		size    = 1<<20 + 1234
		floor   = 256 << 10 // truncates keep the mapped head
		mapped  = 64 << 10
		workers = 4
		ops     = 80
		readers = 2
	)
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	disks := []string{"d", "vm/e"}
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, rec *testRecorder) {
		os.Mkdir(filepath.Join(src, "vm"), 0o755)
		for _, rel := range disks {
			sparseImage(t, rng, src, rel, size)
		}
		writeSource(t, src, "s", randomBytes(rng, size))
	}})
	// d is open (tracked) when the snapshot is taken, vm/e is not.
	dfd := openRW(t, tm.path("d"), 0)

	release, err := tm.srv.Quiesce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := make(map[string][]byte)
	for _, rel := range disks {
		want[rel] = readFile(t, tm.backing(rel))
	}
	dir := filepath.Join(t.TempDir(), "snap")
	snap, err := tm.srv.Snapshot(disks, dir)
	release()
	if err != nil {
		t.Fatal(err)
	}
	views := make(map[string]*View)
	for _, rel := range disks {
		if views[rel], err = snap.View(rel); err != nil {
			t.Fatal(err)
		}
	}

	fds := map[string][2]int{"d": {dfd, openRW(t, tm.path("d"), unix.O_DIRECT)}}
	fds["vm/e"] = [2]int{openRW(t, tm.path("vm/e"), 0), openRW(t, tm.path("vm/e"), unix.O_DIRECT)}
	sfd := openRW(t, tm.path("s"), 0)
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	for r := range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(100+r)))
			buf := make([]byte, 70000)
			for reads := 0; ; reads++ {
				select {
				case <-stop:
					t.Logf("reader %d: %d reads", r, reads)
					return
				default:
				}
				rel := disks[rng.IntN(len(disks))]
				off := rng.Int64N(size)
				n, err := views[rel].ReadAt(buf[:1+rng.IntN(len(buf))], off)
				if err != nil && err != io.EOF {
					t.Errorf("view %s: ReadAt: %v", rel, err)
					return
				}
				if !bytes.Equal(buf[:n], want[rel][off:off+int64(n)]) {
					t.Errorf("view %s at %d+%d: %s", rel, off, n, firstDiff(buf[:n], want[rel][off:off+int64(n)]))
					return
				}
			}
		}()
	}

	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w+2)))
			buf := alignedBuffer(t, rng, 40<<10)
			for range ops {
				rel := disks[rng.IntN(len(disks))]
				fd, dfd := fds[rel][0], fds[rel][1]
				off, n := rng.Int64N(size*6/5), 1+rng.Int64N(20000)
				var err error
				what := ""
				switch r := rng.IntN(100); {
				case r < 35:
					what = "write"
					_, err = unix.Pwrite(fd, buf[:n], off)
				case r < 45:
					what = "direct write"
					_, err = unix.Pwrite(dfd, buf[:4096*(1+n%8)], off&^4095)
				case r < 55:
					what = "punch"
					err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
				case r < 62:
					what = "zero range"
					err = unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, off, n)
				case r < 65:
					what = "collapse"
					err = unix.Fallocate(fd, unix.FALLOC_FL_COLLAPSE_RANGE, floor+off%(size/2)&^4095, 4096*(1+n%4))
					if err == unix.EINVAL || err == unix.EOPNOTSUPP {
						err = nil // past the end, or not on this file system
					}
				case r < 68:
					what = "insert"
					err = unix.Fallocate(fd, unix.FALLOC_FL_INSERT_RANGE, floor+off%(size/2)&^4095, 4096*(1+n%4))
					if err == unix.EINVAL || err == unix.EOPNOTSUPP {
						err = nil
					}
				case r < 75:
					what = "truncate"
					err = unix.Ftruncate(fd, floor+rng.Int64N(size-floor+size/5))
				case r < 95:
					what = "copy"
					in := rng.Int64N(size - n)
					_, err = unix.CopyFileRange(sfd, &in, fd, &off, int(n), 0)
				default:
					// From a child process: see TestMmapHelperProcess.
					what = "mmap write"
					o, l := rng.IntN(mapped-5000), 1+rng.IntN(5000)
					err = <-startMmapWrite(tm.path(rel), mapped, o, l, rng.Uint64())
				}
				if err != nil {
					t.Errorf("%s %s at %d+%d: %v", what, rel, off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	rwg.Wait()

	for _, rel := range disks {
		checkView(t, rel, views[rel], want[rel])
	}
	used := snap.Bytes()
	t.Logf("before-images use %d bytes", used)
	if used == 0 {
		t.Error("Bytes is 0 after changes to snapshotted disks")
	}
	if err := snap.Err(); err != nil {
		t.Fatal(err)
	}

	if err := snap.Delete(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("files left after Delete: %v", left)
	}
	if snap.Bytes() != 0 {
		t.Errorf("Bytes after Delete = %d", snap.Bytes())
	}
	if _, err := views["d"].ReadAt(make([]byte, 10), 0); !errors.Is(err, ErrSnapshotDeleted) {
		t.Errorf("ReadAt after Delete = %v", err)
	}
	m := tm.srv.m
	m.mu.Lock()
	for d := range m.mu.disks {
		if d.snap.Load() != nil {
			t.Errorf("a disk still carries the snapshot after Delete")
		}
	}
	if len(m.mu.snaps) != 0 {
		t.Errorf("the mount still lists %d snapshotted files", len(m.mu.snaps))
	}
	m.mu.Unlock()
	// Writes go on without it.
	if _, err := unix.Pwrite(fds["d"][0], []byte("after"), 0); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotErrors: bad requests fail with a clear error and change
// nothing.
func TestSnapshotErrors(t *testing.T) {
	tm := newTestMount(t, mountConfig{setup: func(src string, rec *testRecorder) {
		writeSource(t, src, "d", []byte("disk"))
		writeSource(t, src, "u", []byte("untracked"))
		os.Link(filepath.Join(src, "d"), filepath.Join(src, "hard"))
		os.Mkdir(filepath.Join(src, "dir"), 0o755)
		rec.untracked = func(rel string) bool { return rel == "u" }
	}})
	readFile(t, tm.path("u")) // opened: known untracked
	dir := t.TempDir()
	snap, err := tm.srv.Snapshot([]string{"d"}, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Delete()
	for _, c := range []struct {
		disks []string
		dir   string
	}{
		{nil, t.TempDir()},
		{[]string{"missing"}, t.TempDir()},
		{[]string{"dir"}, t.TempDir()},
		{[]string{"../escape"}, t.TempDir()},
		{[]string{"d"}, t.TempDir()},      // already in a snapshot
		{[]string{"hard"}, t.TempDir()},   // the same file
		{[]string{"u"}, t.TempDir()},      // untracked
		{[]string{"x", "x"}, t.TempDir()}, // twice
		{[]string{"dir/../d"}, dir},       // its file exists in dir
	} {
		before, _ := os.ReadDir(c.dir)
		s, err := tm.srv.Snapshot(c.disks, c.dir)
		if err == nil {
			s.Delete()
			t.Errorf("Snapshot(%q) succeeded", c.disks)
			continue
		}
		t.Logf("Snapshot(%q): %v", c.disks, err)
		if after, _ := os.ReadDir(c.dir); len(after) != len(before) {
			t.Errorf("Snapshot(%q) left files in %s: %v", c.disks, c.dir, after)
		}
	}
	if _, err := snap.View("other"); err == nil {
		t.Error("View of a disk not in the snapshot succeeded")
	}
}
