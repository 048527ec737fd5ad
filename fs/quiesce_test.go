package fs

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// heldFor is how long a test waits to conclude that a change is held.
const heldFor = 150 * time.Millisecond

// hookedMount is a test mount whose recorder runs *hook (if set) inside
// every change call, so that a test can stop a change in flight.
func hookedMount(t *testing.T, files map[string][]byte) (*testMount, *atomic.Pointer[func(event)]) {
	t.Helper()
	hook := new(atomic.Pointer[func(event)])
	tm := newTestMount(t, mountConfig{setup: func(src string, rec *testRecorder) {
		for rel, data := range files {
			if err := os.MkdirAll(filepath.Dir(filepath.Join(src, rel)), 0o755); err != nil {
				t.Fatal(err)
			}
			writeSource(t, src, rel, data)
		}
		rec.during = func(e event) {
			if f := hook.Load(); f != nil {
				(*f)(e)
			}
		}
	}})
	return tm, hook
}

// openRW opens path read-write in the mount; the test closes it.
func openRW(t *testing.T, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDWR|flags, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// goPwrite writes data at off of fd in a goroutine; the channel yields its
// error once it has returned.
func goPwrite(fd int, data []byte, off int64) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := unix.Pwrite(fd, data, off)
		done <- err
	}()
	return done
}

// mustBeHeld fails the test if done yields within heldFor.
func mustBeHeld(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s completed while quiesced (err %v)", what, err)
	case <-time.After(heldFor):
	}
}

// mustComplete fails the test unless done yields nil within 10 s.
func mustComplete(t *testing.T, what string, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked", what)
	}
}

// TestQuiesceHoldsChanges: every kind of change issued while quiesced
// completes only after release, and is recorded exactly once; reads,
// fsync and untracked files go on.
func TestQuiesceHoldsChanges(t *testing.T) {
	tm, _ := hookedMount(t, map[string][]byte{"d": make([]byte, 64<<10), "s": make([]byte, 64<<10), "f": make([]byte, 100)})
	fd := openRW(t, tm.path("d"), 0)
	ffd := openRW(t, tm.path("f"), 0)
	dfd := openRW(t, tm.path("d"), unix.O_DIRECT)
	sfd := openRW(t, tm.path("s"), 0)
	buf := alignedBuffer(t, rand.New(rand.NewPCG(1, 1)), 4096)

	release, err := tm.srv.Quiesce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	d := tm.rec.mustDisk(t, "d")
	before := len(d.takeEvents())

	ops := map[string]func() error{
		"write": func() error { _, err := unix.Pwrite(fd, buf[:100], 10); return err },
		"direct write": func() error {
			_, err := unix.Pwrite(dfd, buf, 8192)
			return err
		},
		"punch": func() error {
			return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 20000, 5000)
		},
		"zero range": func() error { return unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 30000, 100) },
		"truncate":   func() error { return unix.Ftruncate(fd, 60000) },
		"copy": func() error {
			in, out := int64(0), int64(40000)
			_, err := unix.CopyFileRange(sfd, &in, fd, &out, 3000, 0)
			return err
		},
		"truncate by path": func() error { return unix.Truncate(tm.path("s"), 1000) },
	}
	dones := map[string]<-chan error{}
	for name, op := range ops {
		done := make(chan error, 1)
		go func() { done <- op() }()
		dones[name] = done
	}
	time.Sleep(heldFor)
	for name, done := range dones {
		mustBeHeld(t, name, done)
	}
	// Reads go on, and so does fsync of a file without a held change (a
	// held change keeps the kernel's lock of its inode, which fsync of
	// that file waits for). The read is of a page no held change touches:
	// a held buffered write keeps its page locked in the kernel, and a
	// read of that page, if it is not cached, waits for the lock (the
	// test then never released, and hung).
	if _, err := unix.Pread(fd, make([]byte, 4096), 48<<10); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fsync(ffd); err != nil {
		t.Fatal(err)
	}
	if got := len(d.takeEvents()); got != 0 {
		t.Fatalf("%d changes recorded while quiesced", got)
	}
	release()
	release() // idempotent
	for name, done := range dones {
		mustComplete(t, name, done)
	}
	// write, direct write, punch, zero range (+ nothing: no growth),
	// truncate, copy: one event each (truncate by path is on s).
	if got := len(d.takeEvents()); got != 6 {
		t.Errorf("%d changes recorded after release (%d before), want 6", got, before)
	}
	// The recorder's shadows are checked against the files at cleanup.
}

// TestQuiesceWaitsForInFlight: Quiesce returns only once a change already
// in the daemon has been recorded.
func TestQuiesceWaitsForInFlight(t *testing.T) {
	tm, hook := hookedMount(t, map[string][]byte{"d": make([]byte, 8192)})
	fd := openRW(t, tm.path("d"), 0)
	inside := make(chan struct{})
	var recorded atomic.Bool
	f := func(e event) {
		if e.kind == evWritten {
			close(inside)
			time.Sleep(heldFor)
			recorded.Store(true)
		}
	}
	hook.Store(&f)
	done := goPwrite(fd, []byte("hello"), 0)
	<-inside
	release, err := tm.srv.Quiesce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !recorded.Load() {
		t.Error("Quiesce returned before the write in flight was recorded")
	}
	hook.Store(nil)
	release()
	mustComplete(t, "write", done)
}

// TestQuiesceDeadline: a change stuck in flight makes Quiesce give up at
// its deadline, and the hold is lifted.
func TestQuiesceDeadline(t *testing.T) {
	tm, hook := hookedMount(t, map[string][]byte{"d": make([]byte, 8192), "e": make([]byte, 8192)})
	fd := openRW(t, tm.path("d"), 0)
	efd := openRW(t, tm.path("e"), 0)
	inside, unblock := make(chan struct{}), make(chan struct{})
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(unblock) }) })
	f := func(e event) {
		if e.kind == evWritten {
			close(inside)
			<-unblock
		}
	}
	hook.Store(&f)
	done := goPwrite(fd, []byte("stuck"), 0)
	<-inside
	hook.Store(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	release, err := tm.srv.Quiesce(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || release != nil {
		t.Fatalf("Quiesce = %v, want the deadline", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Quiesce gave up after %v", took)
	}
	// Not held any more: a write goes through (to another file: the
	// stuck write holds the kernel's lock of its inode).
	mustComplete(t, "write after a failed quiesce", goPwrite(efd, []byte("free"), 0))
	once.Do(func() { close(unblock) })
	mustComplete(t, "stuck write", done)
}

// TestQuiesceMmapFsyncUnmount: writes to a shared mapping reach the daemon
// at msync and are held; fsync of a file without dirty pages goes on;
// Unmount fails after HoldWait instead of hanging; after release
// everything completes, recorded once, and the mount unmounts cleanly.
func TestQuiesceMmapFsyncUnmount(t *testing.T) {
	defer func(w time.Duration) { HoldWait = w }(HoldWait)
	HoldWait = 500 * time.Millisecond
	tm, _ := hookedMount(t, map[string][]byte{"d": make([]byte, 16384), "e": make([]byte, 4096)})
	efd := openRW(t, tm.path("e"), 0)
	if _, err := unix.Pwrite(efd, []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	release, err := tm.srv.Quiesce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	synced := startMmapWrite(tm.path("d"), 16384, 5000, 19, 7)
	mustBeHeld(t, "msync of a dirty mapping", synced)
	fsynced := make(chan error, 1)
	go func() { fsynced <- unix.Fsync(efd) }()
	mustComplete(t, "fsync of a file without held writes", fsynced)

	unmounted := make(chan error, 1)
	go func() { unmounted <- tm.srv.Unmount() }()
	select {
	case err := <-unmounted:
		if err == nil {
			t.Fatal("Unmount succeeded while quiesced with files open")
		}
		t.Logf("Unmount while quiesced: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Unmount hangs while quiesced")
	}
	release()
	mustComplete(t, "msync", synced)
	want := randomBytes(rand.New(rand.NewPCG(7, 0)), 19)
	if got := readFile(t, tm.path("d"))[5000:5019]; !bytes.Equal(got, want) {
		t.Errorf("read back %x, want %x", got, want)
	}
}

// TestUnmountWaitsForQuiesce: an Unmount that comes during a quiesce (a
// stop during drfs's own snapshot cut) waits for its release and then
// unmounts; a quiesce asked for meanwhile fails with ErrClosed.
func TestUnmountWaitsForQuiesce(t *testing.T) {
	tm, _ := hookedMount(t, map[string][]byte{"d": make([]byte, 4096)})
	release, err := tm.srv.Quiesce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unmounted := make(chan error, 1)
	go func() { unmounted <- tm.srv.Unmount() }()
	select {
	case err := <-unmounted:
		t.Fatalf("Unmount returned %v while quiesced, want it to wait", err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, err := tm.srv.Quiesce(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Quiesce during Unmount = %v, want ErrClosed", err)
	}
	release()
	select {
	case err := <-unmounted:
		if err != nil {
			t.Fatalf("Unmount after the release: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Unmount did not end after the release")
	}
	if !tm.srv.Stopped() {
		t.Error("the mount has not stopped")
	}
}

// TestQuiescePaths: a hold of one VM's disks leaves the other VM's writes
// alone, and holds a disk of the VM first opened during the hold.
func TestQuiescePaths(t *testing.T) {
	tm, _ := hookedMount(t, map[string][]byte{
		"vm1/a": make([]byte, 4096), "vm1/b": make([]byte, 4096),
		"vm2/a": make([]byte, 4096), "vm10/a": make([]byte, 4096),
	})
	fd1 := openRW(t, tm.path("vm1/a"), 0)
	fd2 := openRW(t, tm.path("vm2/a"), 0)
	fd10 := openRW(t, tm.path("vm10/a"), 0)
	release, err := tm.srv.QuiescePaths(context.Background(), []string{"vm1"})
	if err != nil {
		t.Fatal(err)
	}
	mustComplete(t, "write to another VM", goPwrite(fd2, []byte("x"), 0))
	mustComplete(t, "write to a VM whose name extends the prefix", goPwrite(fd10, []byte("x"), 0))
	held := goPwrite(fd1, []byte("x"), 0)
	fdb := openRW(t, tm.path("vm1/b"), 0) // first open, during the hold
	heldB := goPwrite(fdb, []byte("y"), 0)
	mustBeHeld(t, "write to the quiesced VM", held)
	mustBeHeld(t, "write to a disk of the VM opened during the hold", heldB)
	release()
	mustComplete(t, "held write", held)
	mustComplete(t, "held write to b", heldB)
}

// TestQuiesceClosed: Quiesce on a stopped mount fails with ErrClosed.
func TestQuiesceClosed(t *testing.T) {
	tm, _ := hookedMount(t, nil)
	if err := tm.srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.srv.Quiesce(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Quiesce after Unmount = %v, want ErrClosed", err)
	}
}
