// Package storetest is the conformance suite every target.Store passes, as
// restic's backend test suite and rclone's fstests are for theirs. A store's
// test is one call:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) target.Store { return newStore(t) })
//	}
//
// The suite compares the store with an in-memory model (VM) of recovery
// points built from random generations; the model and its stream builders
// are exported for a store's own tests (crash and fault injection).
//
// Random choices come from a seed that each failing test prints; set
// STORETEST_SEED to replay it.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// Run runs the conformance suite. newStore returns a new, empty store for
// each subtest (and registers its cleanup with t).
func Run(t *testing.T, newStore func(t *testing.T) target.Store) {
	seed := Seed(t)
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, st target.Store, rng *rand.Rand)
	}{
		{"Generations", testGenerations},
		{"NothingVisibleBeforeCommit", testNothingVisible},
		{"CommitIdempotent", testCommitIdempotent},
		{"RestageReplaces", testRestage},
		{"StageWhileCommitting", testPipelined},
		{"CorruptStream", testCorrupt},
		{"TruncatedStream", testTruncated},
		{"StreamMismatch", testMismatch},
		{"ReadError", testReadError},
		{"CommitErrors", testCommitErrors},
		{"NotFound", testNotFound},
		{"BadNames", testBadNames},
		{"WrongSource", testWrongSource},
		{"Expire", testExpire},
		{"ReaderStable", testReaderStable},
		{"ConcurrentVMs", testConcurrent},
		{"Checksums", testChecksums},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := fnv.New64a()
			h.Write([]byte(tc.name))
			rng := rand.New(rand.NewPCG(seed, h.Sum64()))
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("replay with STORETEST_SEED=%d", seed)
				}
			})
			tc.fn(t, newStore(t), rng)
		})
	}
}

// Seed returns the seed of the random choices: STORETEST_SEED if set, else
// one from the clock.
func Seed(t testing.TB) uint64 {
	if s := os.Getenv("STORETEST_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STORETEST_SEED=%q: %v", s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

var ctx = context.Background()

// must fails t on err.
func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// wantKind fails t unless err wraps kind and is permanent.
func wantKind(t testing.TB, what string, err, kind error) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s: no error, want %v", what, kind)
	case !errors.Is(err, kind):
		t.Fatalf("%s: %v, want an error wrapping %q", what, err, kind)
	case !target.IsPermanent(err):
		t.Fatalf("%s: %v: IsPermanent is false", what, err)
	}
}

// wantPermanent fails t unless err is a permanent error.
func wantPermanent(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil || !target.IsPermanent(err) {
		t.Fatalf("%s: %v, want a permanent error", what, err)
	}
}

// snapshot returns the points of vm, to check later that nothing changed.
func snapshot(t testing.TB, st target.Store, vm string) []target.Point {
	t.Helper()
	pts, err := st.Points(ctx, vm)
	must(t, err)
	return pts
}

func unchanged(t testing.TB, st target.Store, vm string, before []target.Point) {
	t.Helper()
	if after := snapshot(t, st, vm); !reflect.DeepEqual(after, before) {
		t.Fatalf("points of %s changed:\n%+v\nwant\n%+v", vm, after, before)
	}
}

// NewVM returns a model VM whose first generation (1) adds disks of random
// sizes (not all multiples of the block size) with random contents. It is
// built but not applied.
func NewVM(rng *rand.Rand, name string, disks ...string) (*VM, *Gen) {
	m := &VM{Name: name, Source: "source-a"}
	g := m.Next(1)
	bs := m.blockSize()
	for _, d := range disks {
		size := int64(8+rng.IntN(24)) * int64(bs)
		if rng.IntN(2) == 0 {
			size += int64(1 + rng.IntN(bs-1))
		}
		g.Add(d, size)
	}
	g.RandomGen(rng, RandomOptions{Changes: 24})
	return m, g
}

// applied creates a model VM and applies n random generations to st.
func applied(t testing.TB, st target.Store, rng *rand.Rand, name string, n int, disks ...string) *VM {
	t.Helper()
	m, g := NewVM(rng, name, disks...)
	must(t, g.Apply(ctx, st))
	for i := 1; i < n; i++ {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, RandomOptions{Changes: 8, MaxGrow: 3 * int64(m.blockSize()), MinSize: 512})
		must(t, g.Apply(ctx, st))
	}
	return m
}

func testGenerations(t *testing.T, st target.Store, rng *rand.Rand) {
	m, g := NewVM(rng, "vm-gens", "root.img", "data/disk1.raw", "data/deep/er/d2")
	must(t, g.Apply(ctx, st))
	m.CheckPoints(t, st)
	gen := uint64(1)
	for i := 2; i <= 10; i++ {
		gen += 1 + rng.Uint64N(2) // generations need not be consecutive
		g := m.Next(gen)
		switch i {
		case 3:
			g.Add("data/new.qcow2", 5*4096+100)
		case 5:
			g.Remove("data/disk1.raw")
		case 6:
			g.Remove("data/deep/er/d2") // removed and created again at one cut
			g.Add("data/deep/er/d2", 2*4096+5)
		case 7:
			g.Add("data/disk1.raw", 3*4096) // re-added: starts empty
		case 8:
			g.Resize("root.img", 0) // empty, then grows below
		case 9:
			g.AppCon = true
			g.Kind = target.KindResync
		}
		g.RandomGen(rng, RandomOptions{Changes: 12, MaxGrow: 10 * 4096, MinSize: 1, Unchanged: 0.25})
		must(t, g.Build())
		must(t, g.Stage(ctx, st))
		if pts := snapshot(t, st, m.Name); len(pts) != len(m.Points) {
			t.Fatalf("gen %d visible before Commit: %v", gen, gens(pts))
		}
		if len(g.StagedDisks()) > 0 {
			_, err := st.Open(ctx, m.Name, gen, g.StagedDisks()[0])
			wantKind(t, "Open of a staged generation", err, target.ErrNotFound)
		}
		must(t, st.Commit(ctx, m.Name, gen, g.Commit()))
		g.Committed()
		// The newest point after each commit; every point at the end.
		p := m.Newest()
		for d, want := range p.Disks {
			must(t, CheckDisk(st, m.Name, p.Gen, d, want))
		}
	}
	m.CheckPoints(t, st)
	vms, err := st.VMs(ctx)
	must(t, err)
	if !slices.Equal(vms, []string{m.Name}) {
		t.Fatalf("VMs = %q, want [%q]", vms, m.Name)
	}
	// A removed disk is gone from the points after its removal.
	_, err = st.Open(ctx, m.Name, m.Points[4].Gen, "data/disk1.raw")
	wantKind(t, "Open of a removed disk", err, target.ErrNotFound)
}

func testNothingVisible(t *testing.T, st target.Store, rng *rand.Rand) {
	m, g := NewVM(rng, "vm-new", "d")
	must(t, g.Build())
	must(t, g.Stage(ctx, st))
	vms, err := st.VMs(ctx)
	must(t, err)
	if len(vms) != 0 {
		t.Fatalf("VMs = %q after Stage only, want none", vms)
	}
	_, err = st.Points(ctx, m.Name)
	wantKind(t, "Points after Stage only", err, target.ErrNotFound)
	_, err = st.Open(ctx, m.Name, 1, "d")
	wantKind(t, "Open after Stage only", err, target.ErrNotFound)

	must(t, st.Commit(ctx, m.Name, 1, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)

	g = m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 30})
	must(t, g.Build())
	must(t, g.Stage(ctx, st))
	_, err = st.Open(ctx, m.Name, 2, "d")
	wantKind(t, "Open of a staged generation", err, target.ErrNotFound)
	m.CheckPoints(t, st) // point 1 reads as before
}

func testCommitIdempotent(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-idem", 2, "a", "b/c")
	before := snapshot(t, st, m.Name)
	last := m.Newest()
	c := target.Commit{Source: m.Source, Frozen: last.Frozen, Kind: last.Kind, Disks: []string{"a", "b/c"}, AppConsistent: last.AppCon}
	must(t, st.Commit(ctx, m.Name, last.Gen, c))
	unchanged(t, st, m.Name, before)

	// Sending the generation again, whole, after it was committed is harmless.
	g := m.Next(last.Gen)
	g.Base = m.Points[0].Gen
	g.RandomGen(rng, RandomOptions{Changes: 10})
	must(t, g.Build())
	for _, d := range g.StagedDisks() {
		_ = st.Stage(ctx, m.Name, g.Gen, d, bytes.NewReader(g.Streams[d]))
	}
	must(t, st.Commit(ctx, m.Name, last.Gen, c))
	unchanged(t, st, m.Name, before)
	m.CheckPoints(t, st)
}

func testRestage(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-restage", 1, "a", "b")
	first := m.Next(2)
	first.RandomGen(rng, RandomOptions{Changes: 20})
	must(t, first.Build())
	must(t, first.Stage(ctx, st))
	second := m.Next(2)
	second.RandomGen(rng, RandomOptions{Changes: 20, MaxGrow: 8192})
	must(t, second.Apply(ctx, st))
	m.CheckPoints(t, st)
}

// testPipelined stages each generation while the previous one commits, as
// the shipper does; a disk added meanwhile starts empty. Every point is
// whole.
func testPipelined(t *testing.T, st target.Store, rng *rand.Rand) {
	m, g := NewVM(rng, "vm-pipe", "a", "b/c")
	must(t, g.Build())
	must(t, g.Stage(ctx, st))
	for i := range 6 {
		gen, c := g.Gen, g.Commit()
		g.Committed() // in the model now: the next generation applies on it
		next := m.Next(gen + 1)
		if i == 2 {
			next.Add("d", 5*4096+100)
		}
		next.RandomGen(rng, RandomOptions{Changes: 12, MaxGrow: 4 * 4096, MinSize: 1})
		must(t, next.Build())
		done := make(chan error, 1)
		go func() { done <- st.Commit(ctx, m.Name, gen, c) }()
		serr := next.Stage(ctx, st)
		must(t, <-done)
		must(t, serr)
		g = next
	}
	must(t, st.Commit(ctx, m.Name, g.Gen, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)
}

// flips returns offsets spread over a stream of n bytes: header, records,
// trailer.
func flips(n int) []int {
	offs := []int{0, 4, 5, 6, 9, 20, 30, 45}
	for i := 1; i < 12; i++ {
		offs = append(offs, n*i/12)
	}
	offs = append(offs, n-41, n-33, n-9, n-1)
	var out []int
	for _, o := range offs {
		if o >= 0 && o < n && !slices.Contains(out, o) {
			out = append(out, o)
		}
	}
	return out
}

func testCorrupt(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-corrupt", 1, "d")
	before := snapshot(t, st, m.Name)
	g := m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 30})
	must(t, g.Build())
	s := g.Streams["d"]
	for _, off := range flips(len(s)) {
		bad := bytes.Clone(s)
		bad[off] ^= 1 << rng.IntN(8)
		err := st.Stage(ctx, m.Name, 2, "d", bytes.NewReader(bad))
		wantKind(t, fmt.Sprintf("Stage with bit %d flipped of %d bytes", off, len(s)), err, target.ErrCorrupt)
	}
	unchanged(t, st, m.Name, before)
	// Nothing was staged: generation 2 commits with d unchanged.
	empty := m.Next(2)
	must(t, empty.Build())
	must(t, st.Commit(ctx, m.Name, 2, empty.Commit()))
	empty.Committed()
	m.CheckPoints(t, st)

	// A good stream staged before a corrupt one survives it.
	g = m.Next(3)
	g.RandomGen(rng, RandomOptions{Changes: 30})
	must(t, g.Build())
	must(t, g.Stage(ctx, st))
	bad := bytes.Clone(g.Streams["d"])
	bad[len(bad)/2] ^= 0x10
	wantKind(t, "Stage of a corrupt stream over a good one", st.Stage(ctx, m.Name, 3, "d", bytes.NewReader(bad)), target.ErrCorrupt)
	must(t, st.Commit(ctx, m.Name, 3, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)
}

func testTruncated(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-trunc", 1, "d")
	before := snapshot(t, st, m.Name)
	g := m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 30})
	must(t, g.Build())
	s := g.Streams["d"]
	for _, n := range []int{0, 1, 4, 20, 50, len(s) / 3, len(s) / 2, len(s) - 41, len(s) - 8, len(s) - 1} {
		if n < 0 || n >= len(s) {
			continue
		}
		err := st.Stage(ctx, m.Name, 2, "d", bytes.NewReader(s[:n]))
		wantKind(t, fmt.Sprintf("Stage of the first %d of %d bytes", n, len(s)), err, target.ErrCorrupt)
	}
	unchanged(t, st, m.Name, before)
	empty := m.Next(2)
	must(t, empty.Build())
	must(t, st.Commit(ctx, m.Name, 2, empty.Commit()))
	empty.Committed()
	m.CheckPoints(t, st)
}

// testMismatch stages good streams under the wrong VM, disk or generation.
func testMismatch(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-mismatch", 1, "d", "e")
	before := snapshot(t, st, m.Name)
	g := m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 5})
	must(t, g.Build())
	s := g.Streams["d"]
	wantPermanent(t, "Stage of disk d's stream as disk e", st.Stage(ctx, m.Name, 2, "e", bytes.NewReader(s)))
	wantPermanent(t, "Stage of generation 2's stream as 3", st.Stage(ctx, m.Name, 3, "d", bytes.NewReader(s)))
	wantPermanent(t, "Stage of vm-mismatch's stream as vm-other", st.Stage(ctx, "vm-other", 2, "d", bytes.NewReader(s)))
	unchanged(t, st, m.Name, before)
	empty := m.Next(2)
	must(t, empty.Build())
	must(t, st.Commit(ctx, m.Name, 2, empty.Commit()))
	empty.Committed()
	m.CheckPoints(t, st)
}

// failingReader returns its data, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// testReadError: a stream whose reader fails (a cut connection) stages
// nothing and is worth a retry.
func testReadError(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-readerr", 1, "d")
	before := snapshot(t, st, m.Name)
	g := m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 30})
	must(t, g.Build())
	s := g.Streams["d"]
	cut := errors.New("connection reset by peer")
	err := st.Stage(ctx, m.Name, 2, "d", &failingReader{bytes.NewReader(s[:len(s)/2]), cut})
	if err == nil || target.IsPermanent(err) {
		t.Fatalf("Stage from a failing reader: %v, want a retryable error", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := st.Stage(cancelled, m.Name, 2, "d", bytes.NewReader(s)); err != nil && target.IsPermanent(err) {
		t.Fatalf("Stage with a cancelled context: %v is permanent", err)
	}
	if err := st.Commit(cancelled, m.Name, 2, g.Commit()); err != nil && target.IsPermanent(err) {
		t.Fatalf("Commit with a cancelled context: %v is permanent", err)
	} else if err == nil {
		g.Committed() // the store did not look at the context: fine
		m.CheckPoints(t, st)
		return
	}
	unchanged(t, st, m.Name, before)
	must(t, g.Apply(ctx, st)) // the retry
	m.CheckPoints(t, st)
}

func testCommitErrors(t *testing.T, st target.Store, rng *rand.Rand) {
	// A first commit with a disk that was never staged.
	err := st.Commit(ctx, "vm-unstaged", 1, target.Commit{Source: "source-a", Kind: target.KindInitial, Disks: []string{"d"}})
	wantPermanent(t, "Commit of an unstaged new disk", err)
	if _, err := st.Points(ctx, "vm-unstaged"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("Points after a failed first commit: %v, want ErrNotFound", err)
	}

	m := applied(t, st, rng, "vm-errs", 1, "d")
	for _, gen := range []uint64{3, 5} { // leave gaps
		g := m.Next(gen)
		g.RandomGen(rng, RandomOptions{Changes: 4})
		must(t, g.Apply(ctx, st))
	}
	before := snapshot(t, st, m.Name)

	// A new disk listed but not staged.
	g := m.Next(6)
	g.Add("new", 8192)
	wantPermanent(t, "Commit with a new disk not staged", st.Commit(ctx, m.Name, 6, g.Commit()))
	unchanged(t, st, m.Name, before)

	// A generation older than the newest point, never committed.
	old := m.Next(4)
	old.Base = 3
	old.Touch("d")
	must(t, old.Build())
	if err := old.Stage(ctx, st); err != nil {
		wantPermanent(t, "Stage out of order", err)
	}
	wantKind(t, "Commit out of order", st.Commit(ctx, m.Name, old.Gen, old.Commit()), target.ErrOutOfOrder)
	unchanged(t, st, m.Name, before)

	// A stream built on a point other than the newest (a broken chain).
	g = m.Next(m.Newest().Gen + 1)
	g.Base = m.Points[1].Gen
	g.RandomGen(rng, RandomOptions{Changes: 4})
	must(t, g.Build())
	must(t, g.Stage(ctx, st))
	wantKind(t, "Commit of a stream on an older base", st.Commit(ctx, m.Name, g.Gen, g.Commit()), target.ErrOutOfOrder)
	unchanged(t, st, m.Name, before)

	// The store still takes the right generation.
	g = m.Next(m.Newest().Gen + 1)
	g.RandomGen(rng, RandomOptions{Changes: 4})
	must(t, g.Apply(ctx, st))
	m.CheckPoints(t, st)
}

func testNotFound(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-nf", 2, "d", "sub/e")
	_, err := st.Points(ctx, "vm-nope")
	wantKind(t, "Points of an unknown VM", err, target.ErrNotFound)
	_, err = st.Open(ctx, "vm-nope", 1, "d")
	wantKind(t, "Open of an unknown VM", err, target.ErrNotFound)
	wantKind(t, "Expire of an unknown VM", st.Expire(ctx, "vm-nope", time.Now(), 1), target.ErrNotFound)
	for _, disk := range []string{"nope", "sub", "sub/nope", "d/x"} {
		_, err = st.Open(ctx, m.Name, 1, disk)
		wantKind(t, "Open of unknown disk "+disk, err, target.ErrNotFound)
	}
	for _, gen := range []uint64{0, 3, 99} {
		_, err = st.Open(ctx, m.Name, gen, "d")
		wantKind(t, fmt.Sprintf("Open of unknown point %d", gen), err, target.ErrNotFound)
	}
	vms, err := st.VMs(ctx)
	must(t, err)
	if !slices.Equal(vms, []string{m.Name}) {
		t.Fatalf("VMs = %q, want [%q]", vms, m.Name)
	}
}

// BadNames are VM and disk names every store refuses with ErrBadName.
var BadNames = []string{
	"", ".", "..", "/abs", "/", "a/../../b", "../x", "x/..", "a/./b", "a//b", "dir/",
	"a\x00b", "\xff\xfe", strings.Repeat("x", frame.MaxNameLen+1),
}

func testBadNames(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-names", 1, "d")
	before := snapshot(t, st, m.Name)
	g := m.Next(2)
	g.RandomGen(rng, RandomOptions{Changes: 3})
	must(t, g.Build())
	s := g.Streams["d"]
	for _, bad := range BadNames {
		q := strconv.Quote(bad)
		if len(q) > 40 {
			q = q[:40] + "..."
		}
		wantKind(t, "Stage to VM "+q, st.Stage(ctx, bad, 2, "d", bytes.NewReader(s)), target.ErrBadName)
		wantKind(t, "Stage of disk "+q, st.Stage(ctx, m.Name, 2, bad, bytes.NewReader(s)), target.ErrBadName)
		c := g.Commit()
		wantKind(t, "Commit to VM "+q, st.Commit(ctx, bad, 2, c), target.ErrBadName)
		c.Disks = append(c.Disks, bad)
		wantKind(t, "Commit with disk "+q, st.Commit(ctx, m.Name, 2, c), target.ErrBadName)
		_, err := st.Points(ctx, bad)
		wantKind(t, "Points of VM "+q, err, target.ErrBadName)
		_, err = st.Open(ctx, bad, 1, "d")
		wantKind(t, "Open of VM "+q, err, target.ErrBadName)
		_, err = st.Open(ctx, m.Name, 1, bad)
		wantKind(t, "Open of disk "+q, err, target.ErrBadName)
		wantKind(t, "Expire of VM "+q, st.Expire(ctx, bad, time.Now(), 1), target.ErrBadName)
	}
	unchanged(t, st, m.Name, before)
	vms, err := st.VMs(ctx)
	must(t, err)
	if !slices.Equal(vms, []string{m.Name}) {
		t.Fatalf("VMs = %q, want [%q]", vms, m.Name)
	}
	// The longest names are fine.
	long := &VM{Name: strings.Repeat("v", frame.MaxNameLen), Source: "source-a"}
	lg := long.Next(1)
	lg.Add(strings.Repeat("d", 100)+"/"+strings.Repeat("e", frame.MaxNameLen-101), 4096)
	lg.Add(strings.Repeat("f", frame.MaxNameLen), 4096)
	lg.RandomGen(rng, RandomOptions{Changes: 2})
	must(t, lg.Apply(ctx, st))
	long.CheckPoints(t, st)
}

func testWrongSource(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-owned", 2, "d")
	before := snapshot(t, st, m.Name)
	g := m.Next(m.Newest().Gen + 1)
	g.RandomGen(rng, RandomOptions{Changes: 10})
	must(t, g.Build())
	if err := g.Stage(ctx, st); err != nil {
		wantKind(t, "Stage by another source", err, target.ErrWrongSource)
	}
	c := g.Commit()
	c.Source = "source-b"
	wantKind(t, "Commit by another source", st.Commit(ctx, m.Name, g.Gen, c), target.ErrWrongSource)
	unchanged(t, st, m.Name, before)
	m.CheckPoints(t, st)
	// The owner goes on.
	must(t, g.Apply(ctx, st))
	m.CheckPoints(t, st)
}

func testExpire(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-expire", 8, "d", "e/f")
	m.CheckPoints(t, st)

	// Nothing is older than the first point.
	must(t, st.Expire(ctx, m.Name, m.Points[0].Frozen, 1))
	m.CheckPoints(t, st)

	// By age: points frozen before the fourth one's time + 1 min go.
	dropped := m.Points[:4]
	must(t, st.Expire(ctx, m.Name, m.Points[3].Frozen.Add(time.Minute), 1))
	m.Points = m.Points[4:]
	m.CheckPoints(t, st)
	for _, p := range dropped {
		_, err := st.Open(ctx, m.Name, p.Gen, "d")
		wantKind(t, fmt.Sprintf("Open of expired point %d", p.Gen), err, target.ErrNotFound)
	}
	// Idempotent.
	must(t, st.Expire(ctx, m.Name, m.Points[0].Frozen, 1))
	m.CheckPoints(t, st)

	// keep is a floor: everything is old, three stay.
	must(t, st.Expire(ctx, m.Name, m.Newest().Frozen.Add(time.Hour), 3))
	m.Points = m.Points[len(m.Points)-3:]
	m.CheckPoints(t, st)

	// The newest point always stays.
	must(t, st.Expire(ctx, m.Name, m.Newest().Frozen.Add(time.Hour), 0))
	m.Points = m.Points[len(m.Points)-1:]
	m.CheckPoints(t, st)

	// Generations go on on top of the merged points.
	for range 3 {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, RandomOptions{Changes: 10, MaxGrow: 8192, MinSize: 512})
		must(t, g.Apply(ctx, st))
	}
	m.CheckPoints(t, st)
	must(t, st.Expire(ctx, m.Name, m.Points[1].Frozen, 0))
	m.Points = m.Points[1:]
	m.CheckPoints(t, st)
}

// testReaderStable: a reader opened on a point keeps reading that point while
// later generations are committed (a test failover while replication goes on).
func testReaderStable(t *testing.T, st target.Store, rng *rand.Rand) {
	m := applied(t, st, rng, "vm-stable", 2, "d")
	oldP, newP := m.Points[0], m.Points[1]
	rOld, err := st.Open(ctx, m.Name, oldP.Gen, "d")
	must(t, err)
	defer rOld.Close()
	rNew, err := st.Open(ctx, m.Name, newP.Gen, "d")
	must(t, err)
	defer rNew.Close()
	for range 3 {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, RandomOptions{Changes: 40, MaxGrow: 8192, MinSize: 512})
		must(t, g.Apply(ctx, st))
	}
	must(t, checkReader(rOld, "reader opened on the older point", oldP.Disks["d"]))
	must(t, checkReader(rNew, "reader opened on the then newest point", newP.Disks["d"]))
	m.CheckPoints(t, st)
}

func testConcurrent(t *testing.T, st target.Store, rng *rand.Rand) {
	const n = 4
	models := make([]*VM, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		seed := rng.Uint64()
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			m, g := NewVM(rng, fmt.Sprintf("vm-conc-%d", i), "d", "e")
			models[i] = m
			if err := g.Apply(ctx, st); err != nil {
				errs <- err
				return
			}
			for range 5 {
				g := m.Next(m.Newest().Gen + 1)
				g.RandomGen(rng, RandomOptions{Changes: 16, MaxGrow: 8192, MinSize: 512})
				if err := g.Apply(ctx, st); err != nil {
					errs <- err
					return
				}
				p := m.Newest()
				for d, want := range p.Disks {
					if err := CheckDisk(st, m.Name, p.Gen, d, want); err != nil {
						errs <- err
						return
					}
				}
			}
			if _, err := st.VMs(ctx); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for _, m := range models {
		m.CheckPoints(t, st)
	}
	vms, err := st.VMs(ctx)
	must(t, err)
	if len(vms) != n || !slices.IsSorted(vms) {
		t.Fatalf("VMs = %q, want %d sorted", vms, n)
	}
}
