package dirstore_test

import (
	"context"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
)

// BenchmarkCommit measures Commit (undo data, apply, sync) of generations
// on a replica that holds the disk: 256 MiB of random 4 KiB blocks or
// 1 MiB extents over a 512 MiB disk written whole at point 1, and (sparse)
// 64 MiB of random 4 KiB blocks over a 4 GiB disk that is a hole but for
// its first MiB (a thin disk filling up). Stage is timed apart
// (stage-MB/s).
//
//	go test -run XXX -bench Commit -benchtime 3x ./target/dirstore/
func BenchmarkCommit(b *testing.B) {
	b.Run("4KiB-random", func(b *testing.B) { benchCommit(b, 4<<10, 512<<20, 256<<20, true) })
	b.Run("1MiB-extents", func(b *testing.B) { benchCommit(b, 1<<20, 512<<20, 256<<20, true) })
	b.Run("4KiB-random-sparse", func(b *testing.B) { benchCommit(b, 4<<10, 4<<30, 64<<20, false) })
}

func benchCommit(b *testing.B, bs int, benchDisk, benchGen int64, dense bool) {
	ctx := context.Background()
	st, err := dirstore.Open(b.TempDir(), dirstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	rng := rand.New(rand.NewPCG(1, uint64(bs)))
	nblocks := int(benchDisk / int64(bs))

	// Point 1: the whole disk (or its first MiB), in 1 MiB blocks.
	all := make([]uint64, benchDisk>>20)
	if !dense {
		all = all[:1]
	}
	for i := range all {
		all[i] = uint64(i)
	}
	commit := func(gen uint64, bs int, blocks []uint64) time.Duration {
		start := time.Now()
		if err := st.Stage(ctx, "vm", gen, "disk", stream(b, rng, gen, bs, benchDisk, blocks)); err != nil {
			b.Fatal(err)
		}
		stage := time.Since(start)
		b.StartTimer()
		c := target.Commit{Source: "bench", Kind: target.KindGeneration, Disks: []string{"disk"}}
		if err := st.Commit(ctx, "vm", gen, c); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		return stage
	}
	b.StopTimer()
	commit(1, 1<<20, all)

	b.SetBytes(benchGen)
	var staging time.Duration
	for i := range b.N {
		gen := uint64(i + 2)
		n := int(benchGen / int64(bs))
		pick := map[uint64]bool{}
		for len(pick) < n {
			pick[uint64(rng.IntN(nblocks))] = true
		}
		blocks := make([]uint64, 0, n)
		for p := range pick {
			blocks = append(blocks, p)
		}
		slices.Sort(blocks)
		staging += commit(gen, bs, blocks)
		if err := st.Expire(ctx, "vm", time.Now().Add(time.Hour), 1); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchGen)*float64(b.N)/staging.Seconds()/1e6, "stage-MB/s")
}

// stream encodes a generation of random blocks as it is read.
func stream(b *testing.B, rng *rand.Rand, gen uint64, bs int, diskSize int64, blocks []uint64) io.Reader {
	pr, pw := io.Pipe()
	seed := rng.Uint64()
	go func() {
		var base uint64
		if gen > 1 {
			base = gen - 1
		}
		fw, err := frame.NewWriter(pw, frame.Header{
			Kind: frame.StreamGeneration, VM: "vm", Disk: "disk", Generation: gen, Base: base,
			BlockSize: bs, DiskSize: uint64(diskSize),
		})
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(gen)})
		data := make([]byte, bs)
		for _, blk := range blocks {
			src.Read(data)
			if err := fw.Data(blk, data); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(fw.Close())
	}()
	return pr
}
