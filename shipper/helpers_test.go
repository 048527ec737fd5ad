package shipper

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"io"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/tracker"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomized tests (0: pick one and print it)")

// testSeed returns the seed to use and logs how to replay it.
func testSeed(t testing.TB) uint64 {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with: go test ./shipper -run '%s$' -seed %d)", seed, t.Name(), seed)
	return seed
}

// image is a disk's backing file in memory, the src of the recorder calls.
type image struct{ b []byte }

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *image) writeAt(p []byte, off int64) {
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	copy(m.b[off:], p)
}

func (m *image) truncate(size int64) {
	if size <= int64(len(m.b)) {
		m.b = m.b[:size]
		return
	}
	m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
}

// punch zeroes [off, off+n) inside the file without changing its size.
func (m *image) punch(off, n int64) {
	if end := min(off+n, int64(len(m.b))); off < end {
		clear(m.b[off:end])
	}
}

// env is a change log and a directory store in temporary directories.
type env struct {
	t         testing.TB
	bs        int
	stateDir  string
	sourceDir string
	storeDir  string
	log       *tracker.Log
	store     *dirstore.Store
}

func newEnv(t testing.TB, bs int) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{
		t:         t,
		bs:        bs,
		stateDir:  filepath.Join(dir, "state"),
		sourceDir: filepath.Join(dir, "source"),
		storeDir:  filepath.Join(dir, "store"),
	}
	e.openLog()
	e.openStore()
	t.Cleanup(func() {
		if e.log != nil {
			e.log.Close()
		}
		if e.store != nil {
			e.store.Close()
		}
	})
	return e
}

func (e *env) openLog() {
	e.t.Helper()
	l, err := tracker.Open(tracker.Options{Dir: e.stateDir, Source: e.sourceDir, BlockSize: e.bs})
	if err != nil {
		e.t.Fatal(err)
	}
	e.log = l
}

func (e *env) openStore() {
	e.t.Helper()
	s, err := dirstore.Open(e.storeDir, dirstore.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.store = s
}

// restart closes and opens the log and the store again, as after a
// restart of both sides.
func (e *env) restart() {
	e.t.Helper()
	if err := e.log.Close(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.store.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.openLog()
	e.openStore()
}

func (e *env) source() *LogSource { return FromLog(e.log, e.bs) }

// disk is one disk of a test VM: its image and its recorder.
type disk struct {
	vm, name, rel string
	img           *image
	d             *tracker.Disk
}

func (e *env) openDisk(rel string) *disk {
	e.t.Helper()
	d, err := e.log.OpenDisk(rel, 0)
	if err != nil || d == nil {
		e.t.Fatalf("OpenDisk(%s): %v, %v", rel, d, err)
	}
	vm, name := rel, rel
	if i := bytes.IndexByte([]byte(rel), '/'); i >= 0 {
		vm, name = rel[:i], rel[i+1:]
	}
	return &disk{vm: vm, name: name, rel: rel, img: &image{}, d: d}
}

// reopen gets the disk's recorder again from a reopened log.
func (e *env) reopen(dk *disk) {
	e.t.Helper()
	d, err := e.log.OpenDisk(dk.rel, int64(len(dk.img.b)))
	if err != nil || d == nil {
		e.t.Fatalf("OpenDisk(%s): %v, %v", dk.rel, d, err)
	}
	dk.d = d
}

func (dk *disk) write(off int64, data []byte) {
	dk.img.writeAt(data, off)
	dk.d.Written(off, data, dk.img)
}

func (dk *disk) zero(off, n int64) {
	dk.img.punch(off, n)
	dk.d.Zeroed(off, n, dk.img)
}

func (dk *disk) resize(size int64) {
	dk.img.truncate(size)
	dk.d.Resized(size, dk.img)
}

func fillRandom(rng *rand.Rand, b []byte) {
	var seed [32]byte
	for i := 0; i < len(seed); i += 8 {
		binary.LittleEndian.PutUint64(seed[i:], rng.Uint64())
	}
	rand.NewChaCha8(seed).Read(b)
}

// randomData returns n bytes that LZ4 compresses some of the time.
func randomData(rng *rand.Rand, n int64) []byte {
	b := make([]byte, n)
	switch rng.IntN(3) {
	case 0:
		fillRandom(rng, b)
	case 1:
		for i := range b {
			b[i] = byte(i / 64)
		}
	default:
		fillRandom(rng, b[:n/2])
	}
	return b
}

// snapshot is the model of a recovery point: disk name → contents.
type snapshot map[string][]byte

// checkPoints compares the points of vm in the store with the model,
// except those in skip, and adds the ones it compared to skip.
func checkPoints(t testing.TB, st target.Store, vm string, want map[uint64]snapshot, skip map[uint64]bool) {
	t.Helper()
	ctx := context.Background()
	points, err := st.Points(ctx, vm)
	if errors.Is(err, target.ErrNotFound) && len(want) == 0 {
		return
	}
	if err != nil {
		t.Fatalf("Points(%s): %v", vm, err)
	}
	for _, p := range points {
		snap, ok := want[p.Generation]
		if !ok {
			t.Fatalf("%s: the store has point %d that the model does not", vm, p.Generation)
		}
		if skip[p.Generation] {
			continue
		}
		var names []string
		for _, d := range p.Disks {
			names = append(names, d.Name)
		}
		wantNames := make([]string, 0, len(snap))
		for n := range snap {
			wantNames = append(wantNames, n)
		}
		slices.Sort(wantNames)
		if !slices.Equal(names, wantNames) {
			t.Fatalf("%s point %d: disks %q, want %q", vm, p.Generation, names, wantNames)
		}
		for _, d := range p.Disks {
			if err := checkDisk(st, vm, p.Generation, d.Name, snap[d.Name]); err != nil {
				t.Fatal(err)
			}
		}
		if skip != nil {
			skip[p.Generation] = true
		}
	}
}

func checkDisk(st target.Store, vm string, gen uint64, name string, want []byte) error {
	r, err := st.Open(context.Background(), vm, gen, name)
	if err != nil {
		return fmt.Errorf("Open(%s, %d, %s): %v", vm, gen, name, err)
	}
	defer r.Close()
	if r.Size() != int64(len(want)) {
		return fmt.Errorf("%s/%s at point %d: size %d, want %d", vm, name, gen, r.Size(), len(want))
	}
	got := make([]byte, len(want))
	if n, err := r.ReadAt(got, 0); n != len(got) {
		return fmt.Errorf("%s/%s at point %d: read %d of %d bytes: %v", vm, name, gen, n, len(got), err)
	}
	if i := firstDiff(got, want); i >= 0 {
		return fmt.Errorf("%s/%s at point %d: first difference at byte %d: got %#x, want %#x", vm, name, gen, i, got[i], want[i])
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// hookStore lets a test intercept calls to a store.
type hookStore struct {
	target.Store
	stage  func(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error
	commit func(ctx context.Context, vm string, gen uint64, c target.Commit) error
}

func (h *hookStore) Stage(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
	if h.stage != nil {
		return h.stage(ctx, vm, gen, disk, r)
	}
	return h.Store.Stage(ctx, vm, gen, disk, r)
}

func (h *hookStore) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	if h.commit != nil {
		return h.commit(ctx, vm, gen, c)
	}
	return h.Store.Commit(ctx, vm, gen, c)
}

// hookSource lets a test intercept Drop.
type hookSource struct {
	Source
	drop func(vm string, gen uint64) error
}

func (h *hookSource) Drop(vm string, gen uint64) error {
	if h.drop != nil {
		return h.drop(vm, gen)
	}
	return h.Source.Drop(vm, gen)
}

// retryable is an error the store may return that a retry may cure.
type retryable struct{ msg string }

func (e retryable) Error() string { return e.msg }

// newFakeClock returns a clock that moves only when told (Advance), or,
// in auto mode, jumps to each timer as it is made and records the wait.
func newFakeClock() *clock.Fake {
	return clock.NewFake(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
}

// waitTimers waits until n timers of c are pending.
func waitTimers(t testing.TB, c *clock.Fake, n int) {
	t.Helper()
	if err := c.WaitTimers(n, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}
