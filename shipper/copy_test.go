package shipper

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

// copyRig is a VM "vm" with one disk "d.img" whose image is mirrored in a
// sparse file, for copies.
type copyRig struct {
	t    *testing.T
	e    *env
	dk   *disk
	path string
	sh   *Shipper
}

func newCopyRig(t *testing.T, rng *rand.Rand, size int64) *copyRig {
	e := newEnv(t, 4096)
	r := &copyRig{t: t, e: e, dk: e.openDisk("vm/d.img"), path: filepath.Join(t.TempDir(), "d.img")}
	r.sh = New(e.source(), e.store, Options{Source: "host-a"})
	r.dk.resize(size)
	for off := int64(0); off < size; off += 1 << 20 {
		if rng.IntN(4) > 0 { // some megabytes stay holes
			r.dk.write(off+rng.Int64N(1<<19), randomData(rng, 1+rng.Int64N(1<<19)))
		}
	}
	r.sync()
	return r
}

// sync writes the image to the file, its zero blocks as holes.
func (r *copyRig) sync() {
	r.t.Helper()
	f, err := os.Create(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	img := r.dk.img.b
	if err := f.Truncate(int64(len(img))); err != nil {
		r.t.Fatal(err)
	}
	for off := int64(0); off < int64(len(img)); off += 4096 {
		blk := img[off:min(off+4096, int64(len(img)))]
		if !zero.Is(blk) {
			if _, err := f.WriteAt(blk, off); err != nil {
				r.t.Fatal(err)
			}
		}
	}
}

// unlogged changes the image (and the file) without telling the log, as a
// write the tracking lost.
func (r *copyRig) unlogged(off int64, data []byte) {
	r.dk.img.writeAt(data, off)
	r.sync()
}

// logged writes through the log, and to the file.
func (r *copyRig) logged(off int64, data []byte) {
	r.dk.write(off, data)
	r.sync()
}

func (r *copyRig) rotate() uint64 { return rotateModel(r.t, r.e, "vm") }

func (r *copyRig) diff(gen uint64) resync.Result {
	r.t.Helper()
	f, err := os.Open(r.path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	res, err := resync.Diff(context.Background(), f, fi.Size(), r.e.store, "vm", gen, "d.img", resync.Options{})
	if err != nil {
		r.t.Fatal(err)
	}
	return res
}

func (r *copyRig) partial(res resync.Result) map[string]CopyDisk {
	return map[string]CopyDisk{"d.img": {Path: r.path, Partial: true, Ranges: res.Ranges, Against: res.Gen}}
}

// check compares point gen with the image, and diffs it with the file.
func (r *copyRig) check(gen uint64) {
	r.t.Helper()
	if err := checkDisk(r.e.store, "vm", gen, "d.img", r.dk.img.b); err != nil {
		r.t.Fatal(err)
	}
	if res := r.diff(gen); !res.InSync() {
		r.t.Fatalf("point %d: Diff finds %v", gen, res.Ranges)
	}
}

func (r *copyRig) replica() string { return filepath.Join(r.e.storeDir, "vm", "replica", "d.img") }

// TestShipCopyWhole: a whole copy replaces the log's records of the disk
// and makes the point the file.
func TestShipCopyWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 1))
	ctx := context.Background()
	r := newCopyRig(t, rng, 6<<20+300)
	gen := r.rotate()
	st, err := r.sh.ShipCopy(ctx, "vm", gen, map[string]string{"d.img": r.path}, target.KindInitial)
	if err != nil {
		t.Fatal(err)
	}
	r.check(gen)
	if st.Generations != 1 || st.ZeroBlocks == 0 {
		t.Fatalf("stats %+v: want one generation with zero blocks", st)
	}
	// A copy must ride on the newest frozen generation.
	r.logged(0, randomData(rng, 5000))
	g2, g3 := r.rotate(), r.rotate()
	if _, err := r.sh.ShipCopy(ctx, "vm", g2, map[string]string{"d.img": r.path}, target.KindResync); err == nil {
		t.Fatalf("ShipCopy on generation %d with %d frozen after it: no error", g2, g3)
	}
}

// TestShipCopyRanges: writes lost by the tracking and damage to the
// replica are found by a Diff and repaired by sending only the ranges,
// with the writes logged since the Diff.
func TestShipCopyRanges(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 2))
	ctx := context.Background()
	size := int64(8<<20 + 1000)
	r := newCopyRig(t, rng, size)
	gen1 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	r.check(gen1)

	// Lost writes, one of them a contiguous megabyte, and a damaged replica.
	for range 10 {
		r.unlogged(rng.Int64N(size-5000), randomData(rng, 1+rng.Int64N(5000)))
	}
	r.unlogged(3<<20+17, randomData(rng, 1<<20))
	f, err := os.OpenFile(r.replica(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		f.WriteAt([]byte{0xAA, 0x55}, rng.Int64N(size-2))
	}
	f.Close()
	res := r.diff(gen1)
	if len(res.Ranges) == 0 {
		t.Fatal("Diff found nothing")
	}
	// Writes after the Diff began are in the log: the copy sends them too.
	for range 5 {
		r.logged(rng.Int64N(size-5000), randomData(rng, 1+rng.Int64N(5000)))
	}
	gen2 := r.rotate()
	st, err := r.sh.ShipCopyDisks(ctx, "vm", gen2, r.partial(res), target.KindResync)
	if err != nil {
		t.Fatal(err)
	}
	r.check(gen2)
	if st.RawBytes >= uint64(res.SendBytes())+6*5000+6*4096 || st.Generations != 1 {
		t.Fatalf("stats %+v: %d bytes of data for %d bytes of ranges", st, st.RawBytes, res.SendBytes())
	}
	pts, err := r.e.store.Points(ctx, "vm")
	if err != nil || pts[len(pts)-1].Kind != target.KindResync {
		t.Fatalf("points %+v, %v", pts, err)
	}
	if f := r.e.log.Frozen("vm"); len(f) != 0 {
		t.Fatalf("frozen after the copy: %v", f)
	}
}

// TestShipCopyRangesAfterGenerations: generations frozen between the Diff's
// point and the copy are shipped from the log first, and every block they
// changed is sent again from the file with the ranges: a write the log
// holds but the tracking later lost (its revert was not logged) does not
// come back.
func TestShipCopyRangesAfterGenerations(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	ctx := context.Background()
	size := int64(4 << 20)
	r := newCopyRig(t, rng, size)
	gen1 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	// Block 100 is written and logged, then put back as it was without the
	// log knowing: the file is as at gen1 there, the log says otherwise.
	old := slices.Clone(r.dk.img.b[100*4096 : 101*4096])
	r.logged(100*4096, randomData(rng, 4096))
	r.unlogged(100*4096, old)
	r.unlogged(2<<20, randomData(rng, 70000))
	res := r.diff(gen1)
	if slices.ContainsFunc(res.Ranges, func(e target.Extent) bool { return e.Off <= 100*4096 && 100*4096 < e.Off+e.Len }) {
		t.Fatalf("ranges %v hold block 100, which the file has as at point %d", res.Ranges, gen1)
	}
	gen2 := r.rotate()
	r.logged(rng.Int64N(size-9000), randomData(rng, 9000))
	gen3 := r.rotate()
	atGen3 := slices.Clone(r.dk.img.b)
	r.logged(rng.Int64N(size-9000), randomData(rng, 9000)) // in the active generation: shipped later
	st, err := r.sh.ShipCopyDisks(ctx, "vm", gen3, r.partial(res), target.KindResync)
	if err != nil {
		t.Fatal(err)
	}
	if st.Generations != 2 {
		t.Fatalf("stats %+v: want generations %d and %d", st, gen2, gen3)
	}
	// Point gen3 is the image at its cut: the ranges and the blocks the
	// log changed, read from the file, over the replica. The write in the
	// active generation comes with the next point.
	if err := checkDisk(r.e.store, "vm", gen3, "d.img", atGen3); err != nil {
		t.Fatal(err)
	}
	gen4 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	r.check(gen4)
}

// TestShipCopyRangesStale: once the target's newest point is not the one
// the ranges were compared against, the copy ships nothing.
func TestShipCopyRangesStale(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 4))
	ctx := context.Background()
	r := newCopyRig(t, rng, 2<<20)
	gen1 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	r.unlogged(12345, randomData(rng, 100))
	res := r.diff(gen1)
	r.logged(0, randomData(rng, 100))
	r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	before, _ := r.e.store.Points(ctx, "vm")
	gen3 := r.rotate()
	_, err := r.sh.ShipCopyDisks(ctx, "vm", gen3, r.partial(res), target.KindResync)
	if !errors.Is(err, ErrStaleRanges) || !target.IsPermanent(err) {
		t.Fatalf("ShipCopyDisks with ranges of point %d: %v, want a permanent ErrStaleRanges", gen1, err)
	}
	after, _ := r.e.store.Points(ctx, "vm")
	if len(after) != len(before) || !slices.Equal(r.e.log.Frozen("vm"), []uint64{gen3}) {
		t.Fatalf("points %d then %d, frozen %v", len(before), len(after), r.e.log.Frozen("vm"))
	}
	// Compared again against the newest point, the copy goes through.
	res = r.diff(after[len(after)-1].Generation)
	if _, err := r.sh.ShipCopyDisks(ctx, "vm", gen3, r.partial(res), target.KindResync); err != nil {
		t.Fatal(err)
	}
	r.check(gen3)
}

// TestShipCopyRangesWhole: a partial copy of a disk the target does not
// hold is sent whole; bad ranges are refused.
func TestShipCopyRangesWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 5))
	ctx := context.Background()
	r := newCopyRig(t, rng, 1<<20)
	gen1 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	e2 := r.e.openDisk("vm/e.img")
	e2.write(5000, randomData(rng, 300000))
	path := filepath.Join(t.TempDir(), "e.img")
	if err := os.WriteFile(path, e2.img.b, 0o600); err != nil {
		t.Fatal(err)
	}
	gen2 := r.rotate()
	disks := map[string]CopyDisk{"e.img": {Path: path, Partial: true, Against: gen1}}
	if _, err := r.sh.ShipCopyDisks(ctx, "vm", gen2, disks, target.KindResync); err != nil {
		t.Fatal(err)
	}
	if err := checkDisk(r.e.store, "vm", gen2, "e.img", e2.img.b); err != nil {
		t.Fatal(err)
	}
	gen3 := r.rotate()
	for _, bad := range [][]target.Extent{{{Off: 10, Len: 0}}, {{Off: 8192, Len: 10}, {Off: 0, Len: 10}}, {{Off: -1, Len: 10}}} {
		disks := map[string]CopyDisk{"d.img": {Path: r.path, Partial: true, Ranges: bad, Against: gen2}}
		if _, err := r.sh.ShipCopyDisks(ctx, "vm", gen3, disks, target.KindResync); !target.IsPermanent(err) {
			t.Fatalf("ranges %v: %v, want a permanent error", bad, err)
		}
	}
}

// TestShipCopyRangesRetry: a copy committed but not dropped (a crash in
// between) is committed again by the retry, with the same ranges.
func TestShipCopyRangesRetry(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 6))
	ctx := context.Background()
	r := newCopyRig(t, rng, 2<<20)
	gen1 := r.rotate()
	if _, err := r.sh.Ship(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	r.unlogged(54321, randomData(rng, 3000))
	res := r.diff(gen1)
	gen2 := r.rotate()
	src := &hookSource{Source: r.e.source()}
	src.drop = func(string, uint64) error { return errors.New("crash") }
	sh := New(src, r.e.store, Options{Source: "host-a"})
	if _, err := sh.ShipCopyDisks(ctx, "vm", gen2, r.partial(res), target.KindResync); err == nil {
		t.Fatal("no error from a failed drop")
	}
	src.drop = nil
	st, err := sh.ShipCopyDisks(ctx, "vm", gen2, r.partial(res), target.KindResync)
	if err != nil || st.Generations != 1 || st.Streams != 0 {
		t.Fatalf("retry: %+v, %v; want the generation committed again, nothing staged", st, err)
	}
	r.check(gen2)
}
