package fs

import (
	"bytes"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// TestWritesReachRecorder writes through the mount with pwrite and with dd
// and checks that the recorder saw exactly the blocks written: with kernel
// passthrough it would see none.
func TestWritesReachRecorder(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewPCG(1, 2))
	initial := randomBytes(rng, 32*bs)
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "disk.img", initial)
	}})

	f, err := os.OpenFile(tm.path("disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(rng, bs), 3*bs); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(randomBytes(rng, 100), 10*bs+50); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dd := exec.Command("dd", "if=/dev/urandom", "of="+tm.path("disk.img"),
		"bs=4096", "seek=20", "count=2", "conv=notrunc", "status=none")
	if out, err := dd.CombinedOutput(); err != nil {
		t.Fatalf("dd: %v: %s", err, out)
	}

	ev := tm.rec.mustDisk(t, "disk.img").takeEvents()
	if got, want := writtenBlocks(ev, bs), []int64{3, 10, 20, 21}; !slices.Equal(got, want) {
		t.Errorf("recorder saw blocks %v, want %v (events %v)", got, want, ev)
	}
	for _, e := range ev {
		if e.kind != evWritten {
			t.Errorf("unexpected %v", e)
		}
	}
}

// TestNoPassthrough fails if a tracked file handle could get kernel
// passthrough, or the mount could negotiate it or a writeback cache.
func TestNoPassthrough(t *testing.T) {
	if fd, ok := (&file{fd: 7}).PassthroughFd(); ok || fd != -1 {
		t.Errorf("PassthroughFd() = %d, %v; want -1, false", fd, ok)
	}
	var h gofs.FileHandle = &file{}
	if pt, ok := h.(gofs.FilePassthroughFder); ok {
		if _, ok := pt.PassthroughFd(); ok {
			t.Error("file handle offers passthrough")
		}
	}
	mo := MountOptions(Options{})
	if mo.DisabledCapabilities&fuse.CAP_PASSTHROUGH == 0 {
		t.Error("MountOptions does not disable CAP_PASSTHROUGH")
	}
	if mo.DisabledCapabilities&fuse.CAP_WRITEBACK_CACHE == 0 {
		t.Error("MountOptions does not disable CAP_WRITEBACK_CACHE")
	}
	if mo.ExtraCapabilities&fuse.CAP_ASYNC_DIO == 0 {
		t.Error("MountOptions does not ask for CAP_ASYNC_DIO")
	}
	if !mo.DisableXAttrs || mo.MaxBackground != 64 {
		t.Errorf("DisableXAttrs %v, MaxBackground %d; want true, 64", mo.DisableXAttrs, mo.MaxBackground)
	}
	if mo.MaxWrite != maxRequest {
		t.Errorf("MaxWrite %d, want %d", mo.MaxWrite, maxRequest)
	}

	// What the kernel and the daemon actually agreed, from the debug log:
	// the INIT reply, and every OPEN and CREATE reply (a passthrough open
	// shows "backing=" and PASSTHROUGH).
	var logBuf syncBuffer
	tm := newTestMount(t, mountConfig{opts: Options{Debug: true, Logger: log.New(&logBuf, "", 0)}})
	if err := os.WriteFile(tm.path("a"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, flags := range []int{os.O_RDONLY, os.O_RDWR, os.O_RDWR | syscall.O_DIRECT} {
		f, err := os.OpenFile(tm.path("a"), flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	init, opens := "", 0
	lines := strings.Split(logBuf.String(), "\n")
	for i, l := range lines {
		if strings.Contains(l, ": INIT ") && i+1 < len(lines) && init == "" {
			for _, r := range lines[i+1:] {
				if strings.HasPrefix(r, "tx ") {
					init = r
					break
				}
			}
		}
		if strings.HasPrefix(l, "tx ") && (strings.Contains(l, "{Fh ")) {
			opens++
			if strings.Contains(l, "backing=") || strings.Contains(l, "PASSTHROUGH") {
				t.Errorf("an open got kernel passthrough: %s", l)
			}
		}
	}
	if init == "" {
		t.Fatalf("no INIT reply in the debug log")
	}
	for _, flag := range []string{"PASSTHROUGH", "WRITEBACK_CACHE"} {
		if strings.Contains(init, flag) {
			t.Errorf("INIT reply enables %s: %s", flag, init)
		}
	}
	if !strings.Contains(init, "ASYNC_DIO") {
		t.Errorf("INIT reply lacks ASYNC_DIO: %s", init)
	}
	if opens < 4 {
		t.Errorf("saw %d OPEN/CREATE replies in the debug log, want 4", opens)
	}
}

// joinWrites joins each Written event with the next when that continues it,
// undoing the kernel's splitting of one write(2) into several WRITEs.
func joinWrites(ev []event) []event {
	var out []event
	for _, e := range ev {
		if l := len(out) - 1; l >= 0 && e.kind == evWritten && out[l].kind == evWritten && out[l].off+out[l].n == e.off {
			out[l].n += e.n
			continue
		}
		out = append(out, e)
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
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

// TestUnalignedWrites: small writes at odd offsets are reported in order
// with exactly their ranges (the kernel may split one write(2) into several
// WRITEs at page boundaries); partial blocks are read back (the shadow
// check).
func TestUnalignedWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	tm := newTestMount(t, mountConfig{blockSize: 512, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "d", randomBytes(rng, 20000))
	}})
	f, err := os.OpenFile(tm.path("d"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var want []event
	for i := 0; i < 50; i++ {
		off := rng.Int64N(24000) // some past the end
		n := 1 + rng.IntN(3000)
		if _, err := f.WriteAt(randomBytes(rng, n), off); err != nil {
			t.Fatal(err)
		}
		want = append(want, event{evWritten, off, int64(n)})
	}
	sameEvents(t, "writes", joinWrites(tm.rec.mustDisk(t, "d").takeEvents()), want)
}

// TestDirectWrites: O_DIRECT writes from aligned buffers are reported, and
// read back through O_DIRECT.
func TestDirectWrites(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewPCG(5, 6))
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "d", make([]byte, 16*bs))
	}})
	fd, err := unix.Open(tm.path("d"), unix.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := alignedBuffer(t, rng, 2*bs)
	for _, off := range []int64{0, 5 * bs, 14 * bs, 16 * bs} {
		if n, err := unix.Pwrite(fd, buf, off); err != nil || n != len(buf) {
			t.Fatalf("pwrite at %d: %d, %v", off, n, err)
		}
	}
	got := alignedBuffer(t, rng, 2*bs)
	if n, err := unix.Pread(fd, got, 5*bs); err != nil || n != len(got) || !bytes.Equal(got, buf) {
		t.Errorf("O_DIRECT read back: %d, %v, equal %v", n, err, bytes.Equal(got, buf))
	}
	ev := tm.rec.mustDisk(t, "d").takeEvents()
	if got, want := writtenBlocks(ev, bs), []int64{0, 1, 5, 6, 14, 15, 16, 17}; !slices.Equal(got, want) {
		t.Errorf("blocks %v, want %v (%v)", got, want, ev)
	}
}

// TestMmapWrite: a store into a shared mapping reaches the recorder as a
// WRITE when msync writes it back.
func TestMmapWrite(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewPCG(7, 8))
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "d", randomBytes(rng, 4*bs))
	}})
	// The store into the mapping comes from a child process (see
	// TestMmapHelperProcess): from this one, its page fault could deadlock
	// with the garbage collector.
	const off, n, seed = 2*bs + 100, 64, 11
	if err := <-startMmapWrite(tm.path("d"), 4*bs, off, n, seed); err != nil {
		t.Fatal(err)
	}
	want := randomBytes(rand.New(rand.NewPCG(seed, 0)), n)
	ev := tm.rec.mustDisk(t, "d").takeEvents()
	if got := writtenBlocks(ev, bs); !slices.Contains(got, 2) {
		t.Errorf("msync of block 2: recorder saw blocks %v (%v)", got, ev)
	}
	if got := readFile(t, tm.backing("d"))[off : off+n]; !bytes.Equal(got, want) {
		t.Error("backing file lacks the mapped write")
	}
}

// TestFsyncSyncsRecorder: fsync and fdatasync call DiskRecorder.Sync and
// return its error.
func TestFsyncSyncsRecorder(t *testing.T) {
	tm := newTestMount(t, mountConfig{})
	f, err := os.Create(tm.path("d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	d := tm.rec.mustDisk(t, "d")
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	if n := d.syncCount(); n != 2 {
		t.Errorf("Sync called %d times, want 2", n)
	}
	tm.rec.setSyncErr(fmt.Errorf("log is on fire: %w", syscall.ENOSPC))
	if err := f.Sync(); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("fsync with a failing Sync: %v, want ENOSPC", err)
	}
	tm.rec.setSyncErr(nil)
}

// TestUntrackedAndFailedOpenDisk: a nil DiskRecorder leaves a file
// untracked but working; an OpenDisk error fails the open with its errno.
func TestUntrackedAndFailedOpenDisk(t *testing.T) {
	tm := newTestMount(t, mountConfig{setup: func(src string, rec *testRecorder) {
		rec.untracked = func(rel string) bool { return strings.HasSuffix(rel, ".txt") }
		rec.openErr = func(rel string) error {
			if rel == "refused" {
				return fmt.Errorf("no room for another disk: %w", syscall.EDQUOT)
			}
			return nil
		}
		writeSource(t, src, "refused", []byte("x"))
	}})
	if err := os.WriteFile(tm.path("notes.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	equalBytes(t, tm.path("notes.txt"), []byte("hello"))
	if d := tm.rec.disk("notes.txt"); d != nil {
		t.Error("untracked file got a disk")
	}
	if _, err := os.OpenFile(tm.path("refused"), os.O_RDWR, 0); !errors.Is(err, syscall.EDQUOT) {
		t.Errorf("open with failing OpenDisk: %v, want EDQUOT", err)
	}
}

// TestNoRecorder: a mount without a Recorder is a plain loopback.
func TestNoRecorder(t *testing.T) {
	tm := newTestMount(t, mountConfig{noRecorder: true})
	if err := os.WriteFile(tm.path("a"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(tm.path("a"), 2); err != nil {
		t.Fatal(err)
	}
	equalBytes(t, tm.backing("a"), []byte("he"))
}
