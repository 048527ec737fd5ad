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
// places, with gaps of up to gap bytes bridged (read-modify-write; gap=0:
// only adjacent blocks coalesced; nocoalesce: one write per block), with
// par writes in flight, on a new disk (its blob all holes) or, with /full,
// on a disk whose every page is allocated (gaps are read). MB/s is
// Commit's (reading the staged stream back, gap reads, page writes,
// snapshot, manifest); stage-MB/s is Stage's, timed apart; page-writes,
// gap-reads and written-MiB are Put Page requests, ranged GETs of gaps and
// Put Page bytes per commit. The blockblob cases upload the same bytes as
// one block blob (4 MiB blocks, 8 or 1 in flight): the most the emulator
// takes in.
//
//	scripts/azurite.sh start
//	go test -run XXX -bench AzblobCommit -benchtime 1x ./target/azblob/
func BenchmarkAzblobCommit(b *testing.B) {
	type commitCase struct {
		gap, parallel int
		nocoalesce    bool
		full          bool
	}
	name := func(c commitCase) string {
		g := fmt.Sprintf("gap=%dK", c.gap>>10)
		if c.nocoalesce {
			g = "nocoalesce"
		}
		n := fmt.Sprintf("%s/par%d", g, c.parallel)
		if c.full {
			n += "/full"
		}
		return n
	}
	for _, bs := range []struct {
		name  string
		size  int
		cases []commitCase
	}{
		{"4KiB-random", 4 << 10, []commitCase{
			{gap: DefaultGap, parallel: 8}, {gap: DefaultGap, parallel: 1}, {gap: DefaultGap, parallel: 16},
			{gap: DefaultGap, parallel: 8, full: true}, {gap: DefaultGap, parallel: 1, full: true},
			{gap: 16 << 10, parallel: 8}, {gap: 32 << 10, parallel: 8}, {gap: 64 << 10, parallel: 8},
			{gap: 256 << 10, parallel: 8}, {gap: 1 << 20, parallel: 8},
			{gap: 16 << 10, parallel: 8, full: true}, {gap: 64 << 10, parallel: 8, full: true},
			{gap: 512 << 10, parallel: 8, full: true},
			{gap: 0, parallel: 8}, {nocoalesce: true, parallel: 8},
		}},
		{"1MiB-extents", 1 << 20, []commitCase{
			{gap: DefaultGap, parallel: 8}, {gap: DefaultGap, parallel: 1}, {gap: DefaultGap, parallel: 16},
			{gap: DefaultGap, parallel: 8, full: true},
			{gap: 1 << 20, parallel: 8}, {gap: 1 << 20, parallel: 8, full: true},
			{gap: 0, parallel: 8}, {nocoalesce: true, parallel: 8},
		}},
	} {
		for _, c := range bs.cases {
			b.Run(bs.name+"/"+name(c), func(b *testing.B) {
				o := Options{Parallel: c.parallel, Gap: c.gap}
				if c.gap == 0 {
					o.Gap = -1
				}
				if c.nocoalesce {
					o.PageWrite = bs.size
				}
				benchCommit(b, bs.size, o, c.full)
			})
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

func benchCommit(b *testing.B, bs int, o Options, full bool) {
	st := newTestStore(b, o)
	rng := rand.New(rand.NewPCG(1, uint64(bs)))
	nblocks := benchDisk / bs
	b.SetBytes(benchGen)
	b.StopTimer()
	gen := uint64(0)
	if full {
		// An untimed first point that allocates every page of the disk.
		gen++
		fs := rand.New(rand.NewPCG(2, 2))
		fb := 1 << 20
		all := make([]uint64, benchDisk/fb)
		for i := range all {
			all[i] = uint64(i)
		}
		if err := st.Stage(bg, "vm", gen, "disk", benchStream(b, fs, gen, fb, all)); err != nil {
			b.Fatal(err)
		}
		c := target.Commit{Source: "bench", Kind: target.KindGeneration, Disks: []string{"disk"}}
		if err := st.Commit(bg, "vm", gen, c); err != nil {
			b.Fatal(err)
		}
	}
	var staging time.Duration
	var stats Stats
	for range b.N {
		gen++
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
		before := st.Stats()
		b.StartTimer()
		c := target.Commit{Source: "bench", Kind: target.KindGeneration, Disks: []string{"disk"}}
		if err := st.Commit(bg, "vm", gen, c); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		after := st.Stats()
		stats.PageWrites += after.PageWrites - before.PageWrites
		stats.GapReads += after.GapReads - before.GapReads
		stats.WriteBytes += after.WriteBytes - before.WriteBytes
	}
	n := float64(b.N)
	b.ReportMetric(float64(benchGen)*n/staging.Seconds()/1e6, "stage-MB/s")
	b.ReportMetric(float64(stats.PageWrites)/n, "page-writes/op")
	b.ReportMetric(float64(stats.GapReads)/n, "gap-reads/op")
	b.ReportMetric(float64(stats.WriteBytes)/n/(1<<20), "written-MiB/op")
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
