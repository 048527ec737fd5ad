package azblob

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// BenchmarkAzblobCommit measures Commit on Azurite of a 256 MiB generation
// of a 512 MiB disk, of random 4 KiB blocks or of 1 MiB extents at random
// places: with page writes coalesced up to 4 MiB or one write per block
// (nocoalesce), with 8 or 1 writes in flight. MB/s is Commit's (reading
// the staged stream back, page writes, snapshot, manifest); stage-MB/s is
// Stage's, timed apart; page-writes is Put Page and Clear Pages calls per
// commit. The blockblob cases upload the same bytes as one block blob
// (4 MiB blocks, 8 or 1 in flight): the floor of what the emulator takes.
//
//	scripts/azurite.sh start
//	go test -run XXX -bench AzblobCommit -benchtime 1x ./target/azblob/
func BenchmarkAzblobCommit(b *testing.B) {
	for _, bs := range []struct {
		name string
		size int
	}{{"4KiB-random", 4 << 10}, {"1MiB-extents", 1 << 20}} {
		for _, c := range []struct {
			name      string
			parallel  int
			pageWrite int
		}{{"par8", 8, 0}, {"par1", 1, 0}, {"par8-nocoalesce", 8, bs.size}} {
			b.Run(bs.name+"/"+c.name, func(b *testing.B) { benchCommit(b, bs.size, c.parallel, c.pageWrite) })
		}
	}
	for _, par := range []int{8, 1} {
		b.Run(fmt.Sprintf("blockblob/par%d", par), func(b *testing.B) { benchBlockBlob(b, par) })
	}
}

const (
	benchDisk = 512 << 20
	benchGen  = 256 << 20
)

func benchCommit(b *testing.B, bs, parallel, pageWrite int) {
	st := newTestStore(b, Options{Parallel: parallel, PageWrite: pageWrite})
	rng := rand.New(rand.NewPCG(1, uint64(bs)))
	nblocks := benchDisk / bs
	b.SetBytes(benchGen)
	b.StopTimer()
	var staging time.Duration
	var writes int64
	for i := range b.N {
		gen := uint64(i + 1)
		blocks := make([]uint64, 0, benchGen/bs)
		for _, p := range rng.Perm(nblocks)[:benchGen/bs] {
			blocks = append(blocks, uint64(p))
		}
		slices.Sort(blocks)
		start := time.Now()
		if err := st.Stage(bg, "vm", gen, "disk", benchStream(b, rng, gen, bs, blocks)); err != nil {
			b.Fatal(err)
		}
		staging += time.Since(start)
		before := st.pageWrites.Load()
		b.StartTimer()
		c := target.Commit{Source: "bench", Kind: target.KindGeneration, Disks: []string{"disk"}}
		if err := st.Commit(bg, "vm", gen, c); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		writes += st.pageWrites.Load() - before
	}
	b.ReportMetric(float64(benchGen)*float64(b.N)/staging.Seconds()/1e6, "stage-MB/s")
	b.ReportMetric(float64(writes)/float64(b.N), "page-writes/op")
}

func benchBlockBlob(b *testing.B, parallel int) {
	st := newTestStore(b, Options{})
	data := make([]byte, benchGen)
	rand.NewChaCha8([32]byte{9}).Read(data)
	b.SetBytes(benchGen)
	b.ResetTimer()
	for i := range b.N {
		_, err := st.cc.NewBlockBlobClient(fmt.Sprintf("bench/%d", i)).UploadBuffer(bg, data, &blockblob.UploadBufferOptions{
			BlockSize: 4 << 20, Concurrency: uint16(parallel),
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

// benchStream encodes a generation of random blocks as it is read.
func benchStream(b *testing.B, rng *rand.Rand, gen uint64, bs int, blocks []uint64) io.Reader {
	pr, pw := io.Pipe()
	seed := rng.Uint64()
	go func() {
		var base uint64
		if gen > 1 {
			base = gen - 1
		}
		fw, err := frame.NewWriter(pw, frame.Header{
			Kind: frame.StreamGeneration, VM: "vm", Disk: "disk", Generation: gen, Base: base,
			BlockSize: bs, DiskSize: benchDisk,
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
