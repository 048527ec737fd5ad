package resync_test

import (
	"bytes"
	"context"
	"flag"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/storetest"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomized tests (0: pick one and print it)")

func testRand(t testing.TB) *rand.Rand {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with: go test ./resync -run '%s$' -seed %d)", seed, t.Name(), seed)
	return rand.New(rand.NewPCG(seed, 1))
}

var ctx = context.Background()

const bs = 4096

// rig is a directory store holding one point of one disk, and the source
// disk as a sparse file.
type rig struct {
	t        testing.TB
	storeDir string
	st       *dirstore.Store
	vm, disk string
	gen      uint64
	img      []byte // the point's contents
	srcPath  string
}

func newRig(t testing.TB, img []byte) *rig {
	t.Helper()
	dir := t.TempDir()
	r := &rig{t: t, storeDir: filepath.Join(dir, "store"), vm: "vm1", disk: "disks/root.img", gen: 1, img: img,
		srcPath: filepath.Join(dir, "source.img")}
	st, err := dirstore.Open(r.storeDir, dirstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r.st = st
	r.commit(img)
	writeSparse(t, r.srcPath, img)
	return r
}

// commit makes img the disk's contents at a new point, sent whole over the
// previous one (zero blocks as zero extents: holes in the replica).
func (r *rig) commit(img []byte) {
	r.t.Helper()
	blocks := map[uint64][]byte{}
	for b := int64(0); b*bs < int64(len(img)); b++ {
		blk := img[b*bs : min((b+1)*bs, int64(len(img)))]
		if !isZero(blk) {
			blocks[uint64(b)] = blk
		} else {
			blocks[uint64(b)] = nil
		}
	}
	var base uint64
	if pts, err := r.st.Points(ctx, r.vm); err == nil {
		base = pts[len(pts)-1].Generation
		r.gen = base + 1
	}
	var buf bytes.Buffer
	_, err := storetest.EncodeStream(&buf, frame.Header{
		Kind: frame.StreamGeneration, VM: r.vm, Disk: r.disk, Generation: r.gen, Base: base,
		BlockSize: bs, DiskSize: uint64(len(img)),
	}, blocks)
	if err != nil {
		r.t.Fatal(err)
	}
	must(r.t, r.st.Stage(ctx, r.vm, r.gen, r.disk, &buf))
	kind := target.KindGeneration
	if base == 0 {
		kind = target.KindInitial
	}
	must(r.t, r.st.Commit(ctx, r.vm, r.gen, target.Commit{Source: "host-a", Kind: kind, Disks: []string{r.disk}}))
	r.img = img
}

func (r *rig) replicaPath() string {
	return filepath.Join(r.storeDir, r.vm, "replica", filepath.FromSlash(r.disk))
}

// diff compares the source file with the rig's point in st (the rig's
// store if nil).
func (r *rig) diff(st target.Store, opts resync.Options) (resync.Result, error) {
	r.t.Helper()
	if st == nil {
		st = r.st
	}
	f, err := os.Open(r.srcPath)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		r.t.Fatal(err)
	}
	return resync.Diff(ctx, f, fi.Size(), st, r.vm, r.gen, r.disk, opts)
}

func (r *rig) mustDiff(st target.Store, opts resync.Options) resync.Result {
	r.t.Helper()
	res, err := r.diff(st, opts)
	if err != nil {
		r.t.Fatalf("Diff: %v", err)
	}
	return res
}

// writeSparse writes img to a new file at path, leaving its zero blocks as
// holes.
func writeSparse(t testing.TB, path string, img []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	must(t, f.Truncate(int64(len(img))))
	for off := int64(0); off < int64(len(img)); off += bs {
		blk := img[off:min(off+bs, int64(len(img)))]
		if !isZero(blk) {
			if _, err := f.WriteAt(blk, off); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// randomImage returns size bytes of regions of random data, compressible
// data, and zeros (holes once written sparse), some of them over 1 MiB.
func randomImage(rng *rand.Rand, size int64) []byte {
	img := make([]byte, size)
	for off := int64(0); off < size; {
		n := min(size-off, bs*(1+rng.Int64N(600)))
		switch rng.IntN(4) {
		case 0, 1:
			fill(rng, img[off:off+n])
		case 2:
			for i := range img[off : off+n] {
				img[off+int64(i)] = byte(i / 100)
			}
		}
		off += n
	}
	return img
}

func fill(rng *rand.Rand, b []byte) {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rng.Uint32())
	}
	rand.NewChaCha8(seed).Read(b)
}

// blockRanges turns a set of block numbers into merged byte ranges, the
// last one cut at size.
func blockRanges(blocks map[int64]bool, size int64) []target.Extent {
	var out []target.Extent
	for _, b := range slices.Sorted(func(yield func(int64) bool) {
		for b := range blocks {
			if !yield(b) {
				return
			}
		}
	}) {
		off := b * bs
		n := min(int64(bs), size-off)
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == off {
			out[k].Len += n
			continue
		}
		out = append(out, target.Extent{Off: off, Len: n})
	}
	return out
}

// corrupt changes one random byte in each of k random blocks of the file at
// path, and returns the blocks.
func corrupt(t testing.TB, rng *rand.Rand, path string, size int64, k int) map[int64]bool {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blocks := map[int64]bool{}
	nblocks := (size + bs - 1) / bs
	for len(blocks) < k {
		b := rng.Int64N(nblocks)
		off := b*bs + rng.Int64N(min(int64(bs), size-b*bs))
		var c [1]byte
		if _, err := f.ReadAt(c[:], off); err != nil {
			t.Fatal(err)
		}
		c[0] ^= byte(1 + rng.IntN(255))
		if _, err := f.WriteAt(c[:], off); err != nil {
			t.Fatal(err)
		}
		blocks[b] = true
	}
	return blocks
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantRanges(t testing.TB, what string, got, want []target.Extent) {
	t.Helper()
	if !slices.Equal(got, want) {
		if len(got) > 20 {
			got = got[:20]
		}
		if len(want) > 20 {
			want = want[:20]
		}
		t.Fatalf("%s: ranges %v, want %v", what, got, want)
	}
}

// noSums hides a store's target.Checksummer: Diff reads the point itself.
type noSums struct{ target.Store }

// unsupported is a store whose Checksums says it has no such call (an
// older remote server).
type unsupported struct{ target.Store }

func (unsupported) Checksums(context.Context, string, uint64, string, int64, []target.Extent) ([]target.Sum, error) {
	return nil, errUnsupported
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

var zeroBlock [bs]byte

// isZero reports whether b (at most a block) holds only zeros.
func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }
