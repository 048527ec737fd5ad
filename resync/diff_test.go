package resync_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

var errUnsupported = fmt.Errorf("no checksum call: %w", errors.ErrUnsupported)

func TestDiffEqual(t *testing.T) {
	rng := testRand(t)
	r := newRig(t, randomImage(rng, 6<<20+1234))
	res := r.mustDiff(nil, resync.Options{})
	if !res.InSync() || len(res.Ranges) != 0 || res.Differing() != 0 || !res.StoreSums {
		t.Fatalf("equal disks: %+v", res)
	}
	if res.Levels[0].Compared != 7 || res.Levels[1].Compared != 0 {
		t.Fatalf("levels %+v: want 7 coarse chunks compared and nothing below", res.Levels)
	}
	if _, err := r.verify(nil); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}

func (r *rig) verify(st target.Store) (resync.Result, error) {
	if st == nil {
		st = r.st
	}
	f, err := os.Open(r.srcPath)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	return resync.Verify(ctx, f, fi.Size(), st, r.vm, r.gen, r.disk, resync.Options{})
}

// TestDiffCorruptReplica: blocks damaged in the replica file behind the
// store's back are exactly the ranges found, through every way of getting
// the point's sums.
func TestDiffCorruptReplica(t *testing.T) {
	rng := testRand(t)
	size := int64(8<<20 + 3000)
	r := newRig(t, randomImage(rng, size))
	blocks := corrupt(t, rng, r.replicaPath(), size, 1+rng.IntN(40))
	want := blockRanges(blocks, size)
	res := r.mustDiff(nil, resync.Options{})
	wantRanges(t, "Diff", res.Ranges, want)
	if res.InSync() || res.SendBytes() != rangeLen(want) || res.Differing() != int64(len(blocks)) {
		t.Fatalf("result %+v", res)
	}
	for _, tc := range []struct {
		name string
		st   target.Store
	}{
		{"without Checksummer", noSums{r.st}},
		{"unsupported Checksums", unsupported{r.st}},
	} {
		res := r.mustDiff(tc.st, resync.Options{})
		wantRanges(t, tc.name, res.Ranges, want)
		if res.StoreSums || res.TargetRead == 0 {
			t.Fatalf("%s: StoreSums %v, TargetRead %d", tc.name, res.StoreSums, res.TargetRead)
		}
	}
	for _, chunks := range [][]int64{{bs}, {1 << 20, bs}, {4 << 20, 256 << 10, 16 << 10, bs}} {
		res := r.mustDiff(nil, resync.Options{Chunks: chunks, Window: 3 << 20})
		wantRanges(t, fmt.Sprintf("chunks %v", chunks), res.Ranges, want)
	}
	_, err := r.verify(nil)
	if !errors.Is(err, resync.ErrDiverged) {
		t.Fatalf("Verify: %v, want ErrDiverged", err)
	}
}

func rangeLen(rs []target.Extent) int64 {
	var n int64
	for _, e := range rs {
		n += e.Len
	}
	return n
}

// TestDiffChangedSource: blocks changed in the source are exactly the
// ranges found, and a finer last level than the frame's block finds them
// to the byte chunk.
func TestDiffChangedSource(t *testing.T) {
	rng := testRand(t)
	size := int64(8<<20 + 512)
	r := newRig(t, randomImage(rng, size))
	blocks := corrupt(t, rng, r.srcPath, size, 1+rng.IntN(40))
	res := r.mustDiff(nil, resync.Options{})
	wantRanges(t, "Diff", res.Ranges, blockRanges(blocks, size))
	if got := res.Differing(); got != int64(len(blocks)) {
		t.Fatalf("%d chunks differ, want %d", got, len(blocks))
	}
}

// TestDiffRegion: one contiguous 20 MiB region changed, at offsets that are
// not chunk-aligned.
func TestDiffRegion(t *testing.T) {
	rng := testRand(t)
	size := int64(32 << 20)
	img := randomImage(rng, size)
	r := newRig(t, img)
	src := slices.Clone(img)
	start := 5<<20 + 1234
	fill(rng, src[start:start+20<<20])
	writeSparse(t, r.srcPath, src)
	res := r.mustDiff(nil, resync.Options{})
	from, to := int64(start)/bs*bs, (int64(start)+20<<20+bs-1)/bs*bs
	wantRanges(t, "Diff", res.Ranges, []target.Extent{{Off: from, Len: to - from}})
	// The checksum traffic is a small part of the data sent.
	if up, down := res.SumBytesUp, res.SumBytesDown; down > res.SendBytes()/50 || up > down {
		t.Fatalf("checksums: %d bytes up, %d down, for %d bytes to send", up, down, res.SendBytes())
	}
}

// TestDiffSizes: a source larger or smaller than the point.
func TestDiffSizes(t *testing.T) {
	rng := testRand(t)
	img := randomImage(rng, 3<<20+100)
	r := newRig(t, img)

	// Grown with zeros: no range differs, but the sizes do.
	writeSparse(t, r.srcPath, append(slices.Clone(img), make([]byte, 2<<20)...))
	res := r.mustDiff(nil, resync.Options{})
	if len(res.Ranges) != 0 || res.InSync() || res.TargetSize != int64(len(img)) {
		t.Fatalf("grown with zeros: %+v", res)
	}
	// Grown with data: the data differs.
	grown := append(slices.Clone(img), make([]byte, 2<<20)...)
	fill(rng, grown[len(img)+1000:len(img)+9000])
	writeSparse(t, r.srcPath, grown)
	res = r.mustDiff(nil, resync.Options{})
	from := (int64(len(img)) + 1000) / bs * bs
	to := (int64(len(img)) + 9000 + bs - 1) / bs * bs
	wantRanges(t, "grown with data", res.Ranges, []target.Extent{{Off: from, Len: to - from}})
	// Shrunk: nothing to send, the size says it all.
	writeSparse(t, r.srcPath, img[:2<<20+77])
	res = r.mustDiff(nil, resync.Options{})
	if res.InSync() || res.Size != 2<<20+77 {
		t.Fatalf("shrunk: %+v", res)
	}
	for _, e := range res.Ranges {
		if e.Off+e.Len > res.Size {
			t.Fatalf("shrunk: range %v past the source's size %d", e, res.Size)
		}
	}
	// Empty.
	writeSparse(t, r.srcPath, nil)
	res = r.mustDiff(nil, resync.Options{})
	if len(res.Ranges) != 0 || res.Compared() != 0 {
		t.Fatalf("empty source: %+v", res)
	}
}

// TestDiffHoles: holes on both sides are not read, on either side.
func TestDiffHoles(t *testing.T) {
	rng := testRand(t)
	size := int64(64 << 20)
	img := make([]byte, size)
	data := int64(0)
	for range 5 {
		off := rng.Int64N(size/bs-64) * bs
		fill(rng, img[off:off+64*bs])
	}
	for b := int64(0); b < size; b += bs {
		if !isZero(img[b : b+bs]) {
			data += bs
		}
	}
	r := newRig(t, img)
	res := r.mustDiff(nil, resync.Options{})
	if len(res.Ranges) != 0 {
		t.Fatalf("ranges %v, want none", res.Ranges)
	}
	if res.SourceRead > data {
		t.Fatalf("read %d bytes of the source, which holds %d bytes of data", res.SourceRead, data)
	}
	// Through a DiskReader, the point's holes are not read either.
	res = r.mustDiff(noSums{r.st}, resync.Options{})
	if res.SourceRead > data || res.TargetRead > data {
		t.Fatalf("read %d bytes of the source and %d of the point, which hold %d bytes of data", res.SourceRead, res.TargetRead, data)
	}
	// A source the Diff cannot see holes in is read whole: the same result.
	f, err := os.Open(r.srcPath)
	must(t, err)
	defer f.Close()
	whole, err := resync.Diff(ctx, readerOnly{f}, size, r.st, r.vm, r.gen, r.disk, resync.Options{})
	must(t, err)
	if whole.SourceRead != size || len(whole.Ranges) != 0 {
		t.Fatalf("plain reader: read %d, ranges %v", whole.SourceRead, whole.Ranges)
	}
}

// readerOnly hides everything of an *os.File but ReadAt.
type readerOnly struct{ f *os.File }

func (r readerOnly) ReadAt(p []byte, off int64) (int, error) { return r.f.ReadAt(p, off) }

// TestDiffResume: a Diff cut at random points and resumed from its cursor,
// marshalled in between, finds what an uncut one finds.
func TestDiffResume(t *testing.T) {
	rng := testRand(t)
	size := int64(12<<20 + 700)
	r := newRig(t, randomImage(rng, size))
	corrupt(t, rng, r.replicaPath(), size, 30)
	corrupt(t, rng, r.srcPath, size, 30)
	opts := resync.Options{Window: 1 << 20}
	want := r.mustDiff(nil, opts)

	var saved []byte
	cuts := 0
	for round := 0; ; round++ {
		if round > 100 {
			t.Fatal("no end after 100 rounds")
		}
		cctx, cancel := context.WithCancel(ctx)
		st := &cancelStore{Store: r.st, cancel: cancel, after: rng.IntN(4)}
		o := opts
		if saved != nil {
			var c resync.Cursor
			must(t, c.Unmarshal(saved))
			o.Resume = &c
		}
		o.Progress = func(p resync.Progress) { saved = p.Cursor.Marshal() }
		f, err := os.Open(r.srcPath)
		must(t, err)
		res, err := resync.Diff(cctx, f, size, st, r.vm, r.gen, r.disk, o)
		f.Close()
		cancel()
		if saved != nil && o.Resume != nil && res.ResumedAt != o.Resume.Offset {
			t.Fatalf("resumed at %d, cursor at %d", res.ResumedAt, o.Resume.Offset)
		}
		if err == nil {
			if !slices.Equal(res.Ranges, want.Ranges) || !slices.Equal(res.Levels, want.Levels) ||
				res.SumBytesUp != want.SumBytesUp || res.SumBytesDown != want.SumBytesDown || res.SourceRead != want.SourceRead {
				t.Fatalf("after %d cuts: %+v\nwant %+v", cuts, res.Counts, want.Counts)
			}
			wantRanges(t, "resumed", res.Ranges, want.Ranges)
			break
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		cuts++
		// The cursor of a failed Diff is the one to resume from.
		if got := res.Cursor.Marshal(); saved != nil && string(got) != string(saved) {
			t.Fatal("Result.Cursor of a cut Diff differs from the last Progress cursor")
		}
	}
	if cuts == 0 {
		t.Fatal("never cut")
	}
	t.Logf("%d cuts", cuts)

	// A cursor of another point starts over.
	var c resync.Cursor
	must(t, c.Unmarshal(saved))
	c.Gen++
	res := r.mustDiff(nil, resync.Options{Window: 1 << 20, Resume: &c})
	if res.Restarted == "" || res.ResumedAt != 0 || !slices.Equal(res.Ranges, want.Ranges) {
		t.Fatalf("cursor of another point: restarted %q at %d", res.Restarted, res.ResumedAt)
	}
}

// cancelStore cancels the Diff's context at its checksum call number
// after.
type cancelStore struct {
	target.Store
	cancel context.CancelFunc
	after  int
	n      int
}

func (c *cancelStore) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	c.n++ // the first level's request is made from its own goroutine, one at a time
	if c.n > c.after {
		c.cancel()
	}
	return c.Store.(target.Checksummer).Checksums(ctx, vm, gen, disk, chunk, ranges)
}

func TestDiffErrors(t *testing.T) {
	rng := testRand(t)
	r := newRig(t, randomImage(rng, 1<<20))
	f, err := os.Open(r.srcPath)
	must(t, err)
	defer f.Close()
	for _, tc := range []struct {
		vm, disk string
		gen      uint64
	}{{"nope", r.disk, r.gen}, {r.vm, "nope", r.gen}, {r.vm, r.disk, r.gen + 1}} {
		_, err := resync.Diff(ctx, f, 1<<20, r.st, tc.vm, tc.gen, tc.disk, resync.Options{})
		if !errors.Is(err, target.ErrNotFound) {
			t.Errorf("Diff of %s/%s point %d: %v, want ErrNotFound", tc.vm, tc.disk, tc.gen, err)
		}
	}
	for _, chunks := range [][]int64{{}, {4096, 4096}, {4096, 65536}, {3000}, {256}, {128 << 20}} {
		if _, err := resync.Diff(ctx, f, 1<<20, r.st, r.vm, r.gen, r.disk, resync.Options{Chunks: chunks}); err == nil {
			t.Errorf("Diff with chunks %v: no error", chunks)
		}
	}
	// A source that fails to read.
	_, err = resync.Diff(ctx, failReader{}, 1<<20, r.st, r.vm, r.gen, r.disk, resync.Options{})
	if !errors.Is(err, errRead) {
		t.Fatalf("Diff of a failing source: %v", err)
	}
}

var errRead = errors.New("read failed")

type failReader struct{}

func (failReader) ReadAt([]byte, int64) (int, error) { return 0, errRead }

func TestSplitLargeRequests(t *testing.T) {
	// A window of 512 MiB at 4 KiB is 131072 chunks: two requests at least.
	size := int64(512 << 20)
	r := newRig(t, nil)
	// The point is an empty disk; the source a 512 MiB sparse file with
	// one block of data.
	f, err := os.Create(r.srcPath)
	must(t, err)
	defer f.Close()
	must(t, f.Truncate(size))
	_, err = f.WriteAt([]byte{1}, size-1)
	must(t, err)
	res, err := resync.Diff(ctx, f, size, r.st, r.vm, r.gen, r.disk, resync.Options{Chunks: []int64{bs}, Window: size})
	must(t, err)
	wantRanges(t, "one block", res.Ranges, []target.Extent{{Off: size - bs, Len: bs}})
	if res.Requests < 2 || res.Levels[0].Compared != size/bs {
		t.Fatalf("%d requests, %d chunks compared", res.Requests, res.Levels[0].Compared)
	}
}

// TestDiffOnly: limited to some ranges (an activity log's hot extents),
// Diff finds exactly the changed blocks inside them, rounded out to the
// coarsest chunk, reads nothing of the source outside them, and resumes
// from a cursor cut between them.
func TestDiffOnly(t *testing.T) {
	rng := testRand(t)
	size := int64(24<<20 + 5000)
	r := newRig(t, randomImage(rng, size))
	blocks := corrupt(t, rng, r.srcPath, size, 1+rng.IntN(60))
	var only []target.Extent
	for off := int64(0); off < size+4<<20; off += 4 << 20 {
		if rng.IntN(2) == 0 {
			// Not chunk-aligned: Diff rounds out to 1 MiB.
			only = append(only, target.Extent{Off: off + int64(rng.IntN(1<<20)), Len: int64(1 + rng.IntN(2<<20))})
		}
	}
	covered := func(b int64) bool {
		for _, o := range only {
			if b*bs >= o.Off/(1<<20)*(1<<20) && b*bs < (o.Off+o.Len+1<<20-1)/(1<<20)*(1<<20) {
				return true
			}
		}
		return false
	}
	inside := map[int64]bool{}
	for b := range blocks {
		if covered(b) {
			inside[b] = true
		}
	}
	want := blockRanges(inside, size)
	t.Logf("only %v: %d of %d changed blocks inside", only, len(inside), len(blocks))
	res := r.mustDiff(nil, resync.Options{Only: only})
	wantRanges(t, "Diff with Only", res.Ranges, want)
	var onlyBytes int64
	for _, o := range only {
		lo, hi := o.Off/(1<<20)*(1<<20), min((o.Off+o.Len+1<<20-1)/(1<<20)*(1<<20), size)
		if hi > lo {
			onlyBytes += hi - lo
		}
	}
	if res.SourceRead > onlyBytes {
		t.Fatalf("read %d bytes of the source, only %d are in the ranges", res.SourceRead, onlyBytes)
	}
	// Cut after the first window, then resumed with the same ranges.
	cctx, cancel := context.WithCancel(ctx)
	windows := 0
	f, err := os.Open(r.srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	part, err := resync.Diff(cctx, f, size, r.st, r.vm, r.gen, r.disk, resync.Options{Only: only, Window: 1 << 20, Progress: func(resync.Progress) {
		if windows++; windows == 2 {
			cancel()
		}
	}})
	cancel()
	if err == nil && len(only) > 2 {
		t.Fatal("Diff was not cut")
	}
	res, err = resync.Diff(ctx, f, size, r.st, r.vm, r.gen, r.disk, resync.Options{Only: only, Window: 1 << 20, Resume: &part.Cursor})
	if err != nil {
		t.Fatal(err)
	}
	wantRanges(t, "resumed Diff with Only", res.Ranges, want)
	// Nothing to compare: in sync whatever the disk holds.
	res = r.mustDiff(nil, resync.Options{Only: []target.Extent{}})
	if len(res.Ranges) != 0 || res.SourceRead != 0 {
		t.Fatalf("empty Only: %+v", res)
	}
}
