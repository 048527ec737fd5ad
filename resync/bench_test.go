package resync_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

var sink uint64

// BenchmarkHash measures the candidate chunk checksums on one core, per
// chunk size (docs/resync.md has the figures and the choice). BLAKE3 is
// not a dependency of drfs; its figures were taken the same way outside.
func BenchmarkHash(b *testing.B) {
	buf := make([]byte, 64<<20)
	fill(rand.New(rand.NewPCG(1, 2)), buf)
	hashes := []struct {
		name string
		fn   func([]byte)
	}{
		{"xxh3-128", func(p []byte) { sink += xxh3.Hash128(p).Lo }},
		{"xxh3-64", func(p []byte) { sink += xxh3.Hash(p) }},
		{"crc32c", func(p []byte) { sink += uint64(crc32.Checksum(p, castagnoli)) }},
		{"sha256", func(p []byte) { s := sha256.Sum256(p); sink += uint64(s[0]) }},
		{"SumOf", func(p []byte) { s := chunksum.Of(p); sink += uint64(s[0]) }},
		{"SumOf-zeros", nil},
	}
	zeros := make([]byte, len(buf))
	for _, chunk := range []int{4 << 10, 64 << 10, 1 << 20} {
		for _, h := range hashes {
			b.Run(fmt.Sprintf("%s/%dKiB", h.name, chunk>>10), func(b *testing.B) {
				data, fn := buf, h.fn
				if fn == nil { // a chunk of zeros: the cost of finding it is zero
					data, fn = zeros, func(p []byte) { s := chunksum.Of(p); sink += uint64(s[0]) }
				}
				b.SetBytes(int64(len(data)))
				for b.Loop() {
					for off := 0; off < len(data); off += chunk {
						fn(data[off : off+chunk])
					}
				}
			})
		}
	}
}

// BenchmarkDiff compares a 256 MiB source file of random data with a
// replica in a directory store that equals it but for 1% of its 4 KiB
// blocks changed at random, or one contiguous 20 MiB region, and reports
// the checksum bytes each way and the bytes to send against the bytes
// changed. The files are in the page cache: the figures are the CPU's.
func BenchmarkDiff(b *testing.B) {
	const size = 256 << 20
	rng := rand.New(rand.NewPCG(3, 4))
	img := make([]byte, size)
	fill(rng, img)
	dir := b.TempDir()
	st, err := dirstore.Open(filepath.Join(dir, "store"), dirstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	stageImage(b, st, img)

	for _, tc := range []struct {
		name   string
		change func(f *os.File) int64 // changes the source, returns the bytes changed
	}{
		{"random1pct", func(f *os.File) int64 {
			seen := map[int64]bool{}
			for len(seen) < size/bs/100 {
				blk := rng.Int64N(size / bs)
				seen[blk] = true
				p := make([]byte, bs)
				fill(rng, p)
				f.WriteAt(p, blk*bs)
			}
			return int64(len(seen)) * bs
		}},
		{"region20MiB", func(f *os.File) int64 {
			p := make([]byte, 20<<20)
			fill(rng, p)
			f.WriteAt(p, 100<<20+12345)
			return int64(len(p))
		}},
	} {
		path := filepath.Join(dir, tc.name+".img")
		must(b, os.WriteFile(path, img, 0o600))
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		must(b, err)
		changed := tc.change(f)
		for _, chunks := range [][]int64{{1 << 20, 4 << 10}, {1 << 20, 64 << 10, 4 << 10}} {
			name := fmt.Sprintf("%s/levels=%d", tc.name, len(chunks))
			b.Run(name, func(b *testing.B) {
				benchDiff(b, f, size, st, chunks, changed)
			})
		}
		b.Run(tc.name+"/remote", func(b *testing.B) {
			c, _ := serve(b, st)
			benchDiff(b, f, size, c, nil, changed)
		})
		f.Close()
	}
}

func benchDiff(b *testing.B, f *os.File, size int64, st target.Store, chunks []int64, changed int64) {
	b.SetBytes(size)
	var res resync.Result
	for b.Loop() {
		var err error
		res, err = resync.Diff(context.Background(), f, size, st, "vm1", 1, "disks/root.img", resync.Options{Chunks: chunks})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(res.SumBytesUp), "sum-up-B")
	b.ReportMetric(float64(res.SumBytesDown), "sum-down-B")
	b.ReportMetric(float64(res.Requests), "requests")
	b.ReportMetric(float64(res.SendBytes()), "send-B")
	b.ReportMetric(float64(changed), "changed-B")
	b.ReportMetric(float64(res.SendBytes())/float64(changed), "send/changed")
	b.ReportMetric(float64(res.SumBytesUp+res.SumBytesDown)/float64(changed), "sums/changed")
}

// stageImage commits img as point 1 of disk "disks/root.img" of VM "vm1".
func stageImage(b *testing.B, st *dirstore.Store, img []byte) {
	pr, pw := io.Pipe()
	go func() {
		fw, err := frame.NewWriter(pw, frame.Header{Kind: frame.StreamGeneration, VM: "vm1", Disk: "disks/root.img",
			Generation: 1, BlockSize: 1 << 20, DiskSize: uint64(len(img))})
		for blk := 0; err == nil && blk*(1<<20) < len(img); blk++ {
			err = fw.Data(uint64(blk), img[blk<<20:min((blk+1)<<20, len(img))])
		}
		if err == nil {
			err = fw.Close()
		}
		pw.CloseWithError(err)
	}()
	must(b, st.Stage(ctx, "vm1", 1, "disks/root.img", pr))
	must(b, st.Commit(ctx, "vm1", 1, target.Commit{Source: "host-a", Kind: target.KindInitial, Disks: []string{"disks/root.img"}}))
}
