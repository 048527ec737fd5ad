package tracker

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// zeroSource is a backing file the benchmarks never need to read: their
// writes are block aligned.
type zeroSource struct{}

func (zeroSource) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

// BenchmarkWritten measures the log's own write path on a real directory:
// how fast it can take the FUSE writes, with no FUSE in front. Generations
// are rotated and dropped as they fill so the segment stays bounded; that
// cost is part of the figure.
func BenchmarkWritten(b *testing.B) {
	const diskSize = 1 << 30
	cases := []struct {
		name       string
		size       int
		random     bool
		parallel   bool
		rotateEach int
	}{
		{"4KiB-random", 4 << 10, true, false, 16 << 10},
		{"4KiB-random-parallel", 4 << 10, true, true, 16 << 10},
		{"1MiB-sequential", 1 << 20, false, false, 64},
		{"1MiB-sequential-parallel", 1 << 20, false, true, 64},
		// Without rotation nothing is synced: the write path alone, into
		// the page cache.
		{"4KiB-random-norotate", 4 << 10, true, false, 0},
		{"1MiB-sequential-norotate", 1 << 20, false, false, 0},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			l, err := Open(Options{Dir: b.TempDir(), Source: b.TempDir()})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			d, err := l.OpenDisk("vm/disk.img", diskSize)
			if err != nil {
				b.Fatal(err)
			}
			var ops atomic.Int64
			step := func(rng *rand.Rand, data []byte, seq *int64, lo, hi int64) {
				var off int64
				if c.random {
					off = lo + rng.Int64N((hi-lo)/int64(c.size))*int64(c.size)
				} else {
					off = lo + *seq
					*seq = (*seq + int64(c.size)) % (hi - lo)
				}
				d.Written(off, data, zeroSource{})
				if n := ops.Add(1); c.rotateEach > 0 && n%int64(c.rotateEach) == 0 {
					g, err := l.Rotate("vm")
					if err != nil {
						b.Error(err)
						return
					}
					if err := l.Drop("vm", g); err != nil {
						b.Error(err)
					}
				}
			}
			b.SetBytes(int64(c.size))
			b.ResetTimer()
			if !c.parallel {
				rng := rand.New(rand.NewPCG(1, 2))
				data := make([]byte, c.size)
				fillRandom(rng, data)
				var seq int64
				for i := 0; i < b.N; i++ {
					step(rng, data, &seq, 0, diskSize)
				}
				return
			}
			var worker atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				// Each goroutine owns a slice of the disk, as fs's block
				// locks would keep concurrent writes apart.
				w := worker.Add(1)
				const part = diskSize / 16
				lo := (w % 16) * part
				rng := rand.New(rand.NewPCG(uint64(w), 2))
				data := make([]byte, c.size)
				fillRandom(rng, data)
				var seq int64
				for pb.Next() {
					step(rng, data, &seq, lo, lo+part)
				}
			})
		})
	}
}
