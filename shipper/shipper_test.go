package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/target/wrap"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// smallVM makes a VM "vm" with two disks, writes to both and rotates
// once; it returns the generation and the disks.
func smallVM(t *testing.T, e *env, rng *rand.Rand) (uint64, []*disk) {
	t.Helper()
	disks := []*disk{e.openDisk("vm/a.img"), e.openDisk("vm/b/c.img")}
	for _, dk := range disks {
		for range 8 {
			dk.write(rng.Int64N(64<<10), randomData(rng, 1+rng.Int64N(16<<10)))
		}
	}
	return rotateModel(t, e, "vm"), disks
}

func rotateModel(t *testing.T, e *env, vm string) uint64 {
	t.Helper()
	gen, err := e.log.Rotate(vm)
	if err != nil {
		t.Fatal(err)
	}
	return gen
}

func snap(disks []*disk) snapshot {
	s := snapshot{}
	for _, dk := range disks {
		s[dk.name] = slices.Clone(dk.img.b)
	}
	return s
}

// events records the order of commits and drops.
type events struct {
	mu  sync.Mutex
	log []string
}

func (ev *events) add(format string, args ...any) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.log = append(ev.log, fmt.Sprintf(format, args...))
}

// commit commits gen to e's store and records it; with fail it records a
// failure instead and returns a retryable error.
func (ev *events) commit(ctx context.Context, e *env, vm string, gen uint64, c target.Commit, fail bool) error {
	if fail {
		ev.add("commit %d failed", gen)
		return retryable{"connection reset"}
	}
	err := e.store.Commit(ctx, vm, gen, c)
	if err == nil {
		ev.add("commit %d", gen)
	}
	return err
}

// dropsOf returns e's log as a Source that records each Drop.
func (ev *events) dropsOf(e *env) Source {
	src := &hookSource{Source: e.source()}
	src.drop = func(vm string, gen uint64) error {
		ev.add("drop %d", gen)
		return e.log.Drop(vm, gen)
	}
	return src
}

func (ev *events) list() []string {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return slices.Clone(ev.log)
}

// TestDropOnlyAfterCommit fails Commit: the generation stays in the log,
// and the next Ship sends it again and drops it only after its commit.
func TestDropOnlyAfterCommit(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 1))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen1, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen1: snap(disks)}
	disks[0].write(4096, randomData(rng, 8192))
	gen2 := rotateModel(t, e, "vm")
	want[gen2] = snap(disks)

	ev := &events{}
	fail := 2 // commits of gen2 that fail
	store := &hookStore{Store: e.store}
	store.commit = func(ctx context.Context, vm string, gen uint64, c target.Commit) error {
		failing := gen == gen2 && fail > 0
		if failing {
			fail--
		}
		return ev.commit(ctx, e, vm, gen, c, failing)
	}
	sh := New(ev.dropsOf(e), store, Options{Source: "host-a"})

	st, err := sh.Ship(ctx, "vm")
	if err == nil || target.IsPermanent(err) {
		t.Fatalf("Ship: %v, want a retryable error", err)
	}
	if st.Generations != 1 || st.Last != gen1 {
		t.Fatalf("Ship stats %+v, want generation %d only", st, gen1)
	}
	if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen2}) {
		t.Fatalf("frozen after a failed commit: %v, want [%d]", f, gen2)
	}
	if _, err := sh.Ship(ctx, "vm"); err == nil {
		t.Fatal("second Ship succeeded, want the second commit failure")
	}
	st, err = sh.Ship(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if st.Generations != 1 || st.Last != gen2 || st.Streams != 1 {
		t.Fatalf("third Ship: %+v, want generation %d in one stream", st, gen2)
	}
	wantEv := []string{
		fmt.Sprintf("commit %d", gen1), fmt.Sprintf("drop %d", gen1),
		fmt.Sprintf("commit %d failed", gen2), fmt.Sprintf("commit %d failed", gen2),
		fmt.Sprintf("commit %d", gen2), fmt.Sprintf("drop %d", gen2),
	}
	if got := ev.list(); !slices.Equal(got, wantEv) {
		t.Fatalf("events %q, want %q", got, wantEv)
	}
	if f := e.log.Frozen("vm"); len(f) != 0 {
		t.Fatalf("frozen after success: %v", f)
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// TestCrashBetweenCommitAndDrop: the shipper stops after the store
// committed a generation but before the log dropped it. After a restart
// of both sides the generation is committed again, which changes nothing,
// and dropped, without being staged again.
func TestCrashBetweenCommitAndDrop(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 2))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen: snap(disks)}

	src := &hookSource{Source: e.source()}
	src.drop = func(string, uint64) error { return errors.New("killed") }
	if _, err := New(src, e.store, Options{Source: "host-a"}).Ship(ctx, "vm"); err == nil {
		t.Fatal("Ship succeeded although Drop failed")
	}
	if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen}) {
		t.Fatalf("frozen: %v, want [%d]", f, gen)
	}
	before, err := e.store.Points(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}

	e.restart()
	for _, dk := range disks {
		e.reopen(dk)
	}
	var staged, commits int
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, g uint64, d string, r io.Reader) error {
		staged++
		return e.store.Stage(ctx, vm, g, d, r)
	}
	store.commit = func(ctx context.Context, vm string, g uint64, c target.Commit) error {
		commits++
		return e.store.Commit(ctx, vm, g, c)
	}
	st, err := New(e.source(), store, Options{Source: "host-a"}).Ship(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if st.Generations != 1 || st.Last != gen || staged != 0 || commits != 1 {
		t.Fatalf("resumed Ship: %+v, %d stages, %d commits; want generation %d committed again without staging", st, staged, commits, gen)
	}
	if f := e.log.Frozen("vm"); len(f) != 0 {
		t.Fatalf("frozen after resume: %v", f)
	}
	after, err := e.store.Points(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || after[0].Applied != before[0].Applied {
		t.Fatalf("points changed by the repeated commit: %+v, was %+v", after, before)
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// TestWrongSourceIsPermanent: a VM the store replicates from another
// source stops with a permanent error and stays in the log.
func TestWrongSourceIsPermanent(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen, disks := smallVM(t, e, rng)
	if _, err := New(e.source(), e.store, Options{Source: "host-a"}).Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	disks[1].write(0, randomData(rng, 100))
	gen2 := rotateModel(t, e, "vm")
	_, err := New(e.source(), e.store, Options{Source: "host-b"}).Ship(ctx, "vm")
	if !errors.Is(err, target.ErrWrongSource) || !target.IsPermanent(err) {
		t.Fatalf("Ship from another source: %v, want a permanent ErrWrongSource", err)
	}
	if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen2}) {
		t.Fatalf("frozen: %v, want [%d] (after %d)", f, gen2, gen)
	}
}

// corruptReader flips one byte of a stream.
type corruptReader struct {
	r   io.Reader
	at  int64 // offset of the byte to flip
	pos int64
}

func (c *corruptReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.pos <= c.at && c.at < c.pos+int64(n) {
		p[c.at-c.pos] ^= 0x40
	}
	c.pos += int64(n)
	return n, err
}

// TestCorruptStreamIsPermanent: a stream damaged on the way is refused by
// the store, and Ship reports that as permanent; nothing is dropped.
func TestCorruptStreamIsPermanent(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 4))
	e := newEnv(t, 4096)
	gen, _ := smallVM(t, e, rng)
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, g uint64, d string, r io.Reader) error {
		return e.store.Stage(ctx, vm, g, d, &corruptReader{r: r, at: 200})
	}
	_, err := New(e.source(), wrap.Retry(store, wrap.Policy{}, newFakeClock()), Options{Source: "host-a"}).Ship(context.Background(), "vm")
	if !errors.Is(err, target.ErrCorrupt) || !target.IsPermanent(err) {
		t.Fatalf("Ship through a damaging link: %v, want a permanent ErrCorrupt", err)
	}
	if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen}) {
		t.Fatalf("frozen: %v, want [%d]", f, gen)
	}
	if _, err := e.store.Points(context.Background(), "vm"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("Points after a refused stream: %v, want ErrNotFound", err)
	}
}

// flakyReader fails after n bytes.
type flakyReader struct {
	r io.Reader
	n int64
}

func (f *flakyReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, retryable{"connection reset by peer"}
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	return n, err
}

// TestRetryRewindsStream: a connection cut in the middle of each disk's
// stream; Retry seeks the shipper's stream back, which encodes the disk
// again from the log, and the point comes out whole.
func TestRetryRewindsStream(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 5))
	e := newEnv(t, 4096)
	ctx := context.Background()
	disks := []*disk{e.openDisk("vm/a.img"), e.openDisk("vm/b.img"), e.openDisk("vm/c.img")}
	for _, dk := range disks {
		// Enough for several flushes of the frame writer, and
		// incompressible, so that each stream is longer than its second
		// cut (200 KiB): 40 disjoint writes of 8 to 32 KiB random bytes.
		for i := range int64(40) {
			b := make([]byte, 8<<10+rng.Int64N(24<<10))
			fillRandom(rng, b)
			dk.write(i*64<<10+rng.Int64N(32<<10), b)
		}
	}
	gen := rotateModel(t, e, "vm")
	want := map[uint64]snapshot{gen: snap(disks)}

	cuts := map[string]int{}
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, g uint64, d string, r io.Reader) error {
		cuts[d]++
		if cuts[d] <= 2 {
			// Read part of the stream, then fail as a network would.
			err := e.store.Stage(ctx, vm, g, d, &flakyReader{r: r, n: int64(cuts[d]) * 100 << 10})
			if err == nil || target.IsPermanent(err) {
				t.Errorf("Stage of a cut stream: %v, want a retryable error", err)
			}
			return err
		}
		return e.store.Stage(ctx, vm, g, d, r)
	}
	clock := newFakeClock()
	clock.SetAuto(true)
	st, err := New(e.source(), wrap.Retry(store, wrap.Policy{}, clock), Options{Source: "host-a"}).Ship(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	for _, dk := range disks {
		if cuts[dk.name] != 3 {
			t.Errorf("disk %s staged %d times, want 3", dk.name, cuts[dk.name])
		}
	}
	if st.Streams != 3 {
		t.Errorf("stats: %+v, want 3 streams", st)
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// TestStageSkipsUnreadStreams: a store may return from Stage without
// reading the whole stream (dirstore does for a generation it holds); the
// encoder gives up that disk quietly and the next disk goes on.
func TestStageSkipsUnreadStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 6))
	e := newEnv(t, 4096)
	gen, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen: snap(disks)}
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, g uint64, d string, r io.Reader) error {
		io.CopyN(io.Discard, r, 10)
		return nil
	}
	var streams []string
	store.commit = func(ctx context.Context, vm string, g uint64, c target.Commit) error {
		streams = c.Disks
		return retryable{"later"}
	}
	if _, err := New(e.source(), store, Options{Source: "host-a"}).Ship(context.Background(), "vm"); err == nil {
		t.Fatal("Ship succeeded with a failing commit")
	}
	if !slices.Equal(streams, []string{"a.img", "b/c.img"}) {
		t.Fatalf("commit disks %q", streams)
	}
	if _, err := New(e.source(), e.store, Options{Source: "host-a"}).Ship(context.Background(), "vm"); err != nil {
		t.Fatal(err)
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// TestOutOfOrder: a store whose newest point is past a generation it does
// not hold stops the VM: the log and the target disagree.
func TestOutOfOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 7))
	e := newEnv(t, 4096)
	ctx := context.Background()
	_, disks := smallVM(t, e, rng)
	sh := New(e.source(), e.store, Options{Source: "host-a"})
	if _, err := sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	disks[0].write(0, randomData(rng, 10))
	gen2 := rotateModel(t, e, "vm")
	disks[0].write(0, randomData(rng, 10))
	gen3 := rotateModel(t, e, "vm")
	// Ship only gen3 by hiding gen2 from the shipper.
	src := &frozenFilter{Source: e.source(), hide: gen2}
	if _, err := New(src, e.store, Options{Source: "host-a"}).Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	_, err := sh.Ship(ctx, "vm")
	if !errors.Is(err, target.ErrOutOfOrder) || !target.IsPermanent(err) {
		t.Fatalf("Ship of %d after %d: %v, want a permanent ErrOutOfOrder", gen2, gen3, err)
	}
}

type frozenFilter struct {
	Source
	hide uint64
}

func (f *frozenFilter) Frozen(vm string) []uint64 {
	return slices.DeleteFunc(f.Source.Frozen(vm), func(g uint64) bool { return g == f.hide })
}

// TestEmptyGenerations: a generation without changes makes a point with
// the same disks; one of a VM the store never saw goes without a point.
func TestEmptyGenerations(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 8))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen: snap(disks)}
	gen2 := rotateModel(t, e, "vm")
	want[gen2] = snap(disks)
	// A VM whose only disk was created and removed before any rotation.
	ghost := e.openDisk("ghost.img")
	ghost.write(0, []byte("boo"))
	e.log.Removed("ghost.img")
	if _, err := e.log.Rotate("ghost.img"); err != nil {
		t.Fatal(err)
	}
	sh := New(e.source(), e.store, Options{Source: "host-a"})
	for _, vm := range []string{"vm", "ghost.img"} {
		if _, err := sh.Ship(ctx, vm); err != nil {
			t.Fatalf("Ship(%s): %v", vm, err)
		}
		if f := e.log.Frozen(vm); len(f) != 0 {
			t.Fatalf("%s: frozen after Ship: %v", vm, f)
		}
	}
	checkPoints(t, e.store, "vm", want, nil)
	if _, err := e.store.Points(ctx, "ghost.img"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("Points(ghost.img): %v, want ErrNotFound", err)
	}
}

// TestPointFrozenTime: the point carries the time of the rotation that
// froze the generation.
func TestPointFrozenTime(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 9))
	e := newEnv(t, 4096)
	dk := e.openDisk("vm/a.img")
	dk.write(0, randomData(rng, 5000))
	before := time.Now()
	rotateModel(t, e, "vm")
	after := time.Now()
	if _, err := New(e.source(), e.store, Options{Source: "host-a"}).Ship(context.Background(), "vm"); err != nil {
		t.Fatal(err)
	}
	ps, err := e.store.Points(context.Background(), "vm")
	if err != nil {
		t.Fatal(err)
	}
	if f := ps[0].Frozen; f.Before(before.Truncate(time.Microsecond)) || f.After(after) || ps[0].Kind != target.KindGeneration {
		t.Fatalf("point %+v: frozen %v, want between %v and %v", ps[0], f, before, after)
	}
}

// TestBlockSizeMismatch: a source that misstates the log's block size is
// caught at the first data record, and nothing is dropped.
func TestBlockSizeMismatch(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 10))
	e := newEnv(t, 4096)
	gen, _ := smallVM(t, e, rng)
	_, err := New(FromLog(e.log, 8192), e.store, Options{Source: "host-a"}).Ship(context.Background(), "vm")
	if err == nil || !target.IsPermanent(err) {
		t.Fatalf("Ship with the wrong block size: %v, want a permanent error", err)
	}
	t.Log(err)
	if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen}) {
		t.Fatalf("frozen: %v, want [%d]", f, gen)
	}
}

// failingRead fails ReadGeneration after a number of records.
type failingRead struct {
	Source
	after int
	err   error
}

func (f *failingRead) ReadGeneration(vm string, gen uint64, fn func(tracker.Record) error) error {
	n := 0
	return f.Source.ReadGeneration(vm, gen, func(r tracker.Record) error {
		if n++; n > f.after {
			return f.err
		}
		return fn(r)
	})
}

// TestLogReadError: a log that fails in the middle of a generation cuts
// the stream; Ship reports the log's error (retryable), not the store's
// complaint, and the next Ship sends the generation whole.
func TestLogReadError(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 11))
	e := newEnv(t, 4096)
	gen, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen: snap(disks)}
	ioErr := errors.New("input/output error")
	for _, after := range []int{0, 1, 3, 100} {
		src := &failingRead{Source: e.source(), after: after, err: ioErr}
		_, err := New(src, e.store, Options{Source: "host-a"}).Ship(context.Background(), "vm")
		if after == 100 {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
		if !errors.Is(err, ioErr) || target.IsPermanent(err) {
			t.Fatalf("Ship failing after %d records: %v, want the log's error", after, err)
		}
		if f := e.log.Frozen("vm"); !slices.Equal(f, []uint64{gen}) {
			t.Fatalf("frozen: %v, want [%d]", f, gen)
		}
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// With NoCompression every block goes raw, and the points are the same as
// with LZ4: the option changes the wire, not what the target holds.
func TestNoCompression(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			e := newEnv(t, 4096)
			ctx := context.Background()
			dk := e.openDisk("vm/a.img")
			page := bytes.Repeat([]byte("drfs compresses text "), 4096/21+1)[:4096]
			for i := range int64(64) {
				dk.write(i*8192, page)
			}
			gen := rotateModel(t, e, "vm")
			want := map[uint64]snapshot{gen: snap([]*disk{dk})}

			st, err := New(e.source(), e.store, Options{Source: "host-a", NoCompression: raw}).Ship(ctx, "vm")
			if err != nil {
				t.Fatal(err)
			}
			if st.DataBlocks != 64 {
				t.Fatalf("%d data blocks shipped, want 64", st.DataBlocks)
			}
			if raw && (st.Compressed != 0 || st.WireBytes < st.RawBytes) {
				t.Errorf("raw: %d blocks compressed, %d wire bytes for %d bytes of data", st.Compressed, st.WireBytes, st.RawBytes)
			}
			if !raw && (st.Compressed != 64 || st.WireBytes >= st.RawBytes/4) {
				t.Errorf("LZ4: %d of 64 blocks compressed, %d wire bytes for %d bytes of data", st.Compressed, st.WireBytes, st.RawBytes)
			}
			checkPoints(t, e.store, "vm", want, nil)
		})
	}
}

// TestShipPipelined: the commit of each generation runs while the next one
// is staged, yet commits and drops keep their order and every point is
// whole; a commit that fails stops the Ship after the generation staged
// meanwhile, which stays in the log.
func TestShipPipelined(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 7))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen1, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen1: snap(disks)}
	gens := []uint64{gen1}
	for range 3 {
		disks[rng.IntN(2)].write(rng.Int64N(64<<10), randomData(rng, 1+rng.Int64N(16<<10)))
		g := rotateModel(t, e, "vm")
		want[g] = snap(disks)
		gens = append(gens, g)
	}
	last := gens[len(gens)-1]

	ev := &events{}
	staging := map[uint64]chan struct{}{} // closed when the generation's first Stage starts
	for _, g := range gens {
		staging[g] = make(chan struct{})
	}
	failGen := gens[2] // its first commit fails
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
		select {
		case <-staging[gen]:
		default:
			close(staging[gen])
		}
		return e.store.Stage(ctx, vm, gen, disk, r)
	}
	store.commit = func(ctx context.Context, vm string, gen uint64, c target.Commit) error {
		if gen != last {
			// Wait until the next generation is being staged: the test
			// hangs here (and fails) if commits do not overlap staging.
			select {
			case <-staging[gens[slices.Index(gens, gen)+1]]:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("generation %d: the next one was not staged during its commit", gen)
			}
		}
		failing := gen == failGen
		if failing {
			failGen = 0
		}
		return ev.commit(ctx, e, vm, gen, c, failing)
	}
	sh := New(ev.dropsOf(e), store, Options{Source: "host-a"})

	st, err := sh.Ship(ctx, "vm")
	if err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("Ship: %v, want the failed commit", err)
	}
	if st.Generations != 2 || st.Last != gens[1] {
		t.Fatalf("Ship stats %+v, want generations up to %d", st, gens[1])
	}
	if f := e.log.Frozen("vm"); !slices.Equal(f, gens[2:]) {
		t.Fatalf("frozen after a failed commit: %v, want %v", f, gens[2:])
	}
	for _, g := range gens[2:] {
		staging[g] = make(chan struct{})
	}
	if st, err = sh.Ship(ctx, "vm"); err != nil || st.Generations != 2 || st.Last != last {
		t.Fatalf("second Ship: %+v, %v", st, err)
	}
	var wantEv []string
	for i, g := range gens {
		if i == 2 {
			wantEv = append(wantEv, fmt.Sprintf("commit %d failed", g))
		}
		wantEv = append(wantEv, fmt.Sprintf("commit %d", g), fmt.Sprintf("drop %d", g))
	}
	if got := ev.list(); !slices.Equal(got, wantEv) {
		t.Fatalf("events %q, want %q", got, wantEv)
	}
	checkPoints(t, e.store, "vm", want, nil)
}

// TestShipFollow: with Follow, one Ship also sends the generations cut
// while it runs, each staged while the previous one commits, and tells
// OnCommit of each point in order; without it, only those frozen at the
// start.
// TestShipFollowCutDuringCommit: with Follow, a generation cut while the
// one before commits is staged during that commit, not after it.
func TestShipFollowCutDuringCommit(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 9))
	e := newEnv(t, 4096)
	ctx := context.Background()
	gen1, disks := smallVM(t, e, rng)
	want := map[uint64]snapshot{gen1: snap(disks)}
	var mu sync.Mutex
	cuts := 2
	staged := map[uint64]chan struct{}{}
	store := &hookStore{Store: e.store}
	store.stage = func(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
		mu.Lock()
		if ch := staged[gen]; ch != nil {
			close(ch)
			delete(staged, gen)
		}
		mu.Unlock()
		return e.store.Stage(ctx, vm, gen, disk, r)
	}
	store.commit = func(ctx context.Context, vm string, gen uint64, c target.Commit) error {
		mu.Lock()
		var next chan struct{}
		if cuts > 0 {
			cuts--
			disks[0].write(rng.Int64N(64<<10), randomData(rng, 4096))
			g := rotateModel(t, e, "vm")
			want[g] = snap(disks)
			next = make(chan struct{})
			staged[g] = next
		}
		mu.Unlock()
		if next != nil {
			select {
			case <-next:
			case <-time.After(10 * time.Second):
				return fmt.Errorf("generation %d: the one cut during its commit was not staged before it ended", gen)
			}
		}
		return e.store.Commit(ctx, vm, gen, c)
	}
	sh := New(e.source(), store, Options{Source: "host-a", Follow: time.Minute})
	st, err := sh.Ship(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if st.Generations != 3 || len(e.log.Frozen("vm")) != 0 {
		t.Fatalf("%d shipped, %v left; want 3 and none", st.Generations, e.log.Frozen("vm"))
	}
	checkPoints(t, e.store, "vm", want, nil)
}

func TestShipFollow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		follow time.Duration
		asks   int // KeepFollowing says yes this many times (-1: not set)
	}{{"0", 0, -1}, {"1m", time.Minute, -1}, {"1m-until-told", time.Minute, 2}} {
		follow := tc.follow
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), 8))
			e := newEnv(t, 4096)
			ctx := context.Background()
			gen1, disks := smallVM(t, e, rng)
			want := map[uint64]snapshot{gen1: snap(disks)}
			cuts := 3 // generations cut while Ship runs, one at each stage
			var mu sync.Mutex
			store := &hookStore{Store: e.store}
			store.stage = func(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
				mu.Lock()
				if cuts > 0 && disk == "a.img" {
					cuts--
					disks[0].write(rng.Int64N(64<<10), randomData(rng, 4096))
					g := rotateModel(t, e, "vm")
					want[g] = snap(disks)
				}
				mu.Unlock()
				return e.store.Stage(ctx, vm, gen, disk, r)
			}
			var committed []uint64
			opts := Options{Source: "host-a", Follow: follow, OnCommit: func(p target.Point) {
				committed = append(committed, p.Generation)
				if p.Frozen.IsZero() || len(p.Disks) == 0 {
					t.Errorf("OnCommit of a point without its cut or disks: %+v", p)
				}
			}}
			asks := tc.asks
			if asks >= 0 {
				opts.KeepFollowing = func(vm string) bool {
					asks--
					return asks >= 0
				}
			}
			sh := New(e.source(), store, opts)
			st, err := sh.Ship(ctx, "vm")
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			frozen := e.log.Frozen("vm")
			if follow == 0 {
				if st.Generations != 1 || len(frozen) != 1 {
					t.Fatalf("without Follow: %d shipped, %v left; want 1 and 1", st.Generations, frozen)
				}
				return
			}
			if tc.asks >= 0 {
				// Generation 1, then the two KeepFollowing allowed; the
				// one cut while the last was staged stays.
				if st.Generations != 3 || len(frozen) != 1 {
					t.Fatalf("with Follow until told: %d shipped, %v left; want 3 and 1", st.Generations, frozen)
				}
				delete(want, frozen[0])
				checkPoints(t, e.store, "vm", want, nil)
				return
			}
			if st.Generations != 4 || len(frozen) != 0 {
				t.Fatalf("with Follow: %d shipped, %v left; want 4 and none", st.Generations, frozen)
			}
			if !slices.IsSorted(committed) || len(committed) != 4 || committed[3] != st.Last {
				t.Fatalf("OnCommit saw %v, Ship's last is %d", committed, st.Last)
			}
			checkPoints(t, e.store, "vm", want, nil)
		})
	}
}
