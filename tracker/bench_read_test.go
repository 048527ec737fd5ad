package tracker

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkReadGeneration measures ReadGeneration of a frozen generation
// on a real directory: 4 KiB writes at distinct random blocks of a disk 4×
// as large (the segment in write order, the read in block order) and 1 MiB
// sequential extents. "cold" drops the segment from the page cache before
// each read, as drfs bench ship does; "hot" reads it from the cache.
func BenchmarkReadGeneration(b *testing.B) {
	const genSize = 128 << 20
	for _, c := range []struct {
		name string
		size int
	}{{"4KiB-random", 4 << 10}, {"1MiB-extents", 1 << 20}} {
		dir := b.TempDir()
		l, err := Open(Options{Dir: dir, Source: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		const diskSize = 4 * genSize
		d, err := l.OpenDisk("vm/disk.img", diskSize)
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		data := make([]byte, c.size)
		fillRandom(rng, data)
		for _, i := range rng.Perm(diskSize / c.size)[:genSize/c.size] {
			d.Written(int64(i)*int64(c.size), data, zeroSource{})
		}
		gen, err := l.Rotate("vm")
		if err != nil {
			b.Fatal(err)
		}
		for _, cold := range []bool{false, true} {
			name := c.name + "-hot"
			if cold {
				name = c.name + "-cold"
			}
			b.Run(name, func(b *testing.B) {
				if cold && !dropCacheSupported {
					b.Skip("no way to drop the page cache here")
				}
				b.SetBytes(genSize)
				for i := 0; i < b.N; i++ {
					if cold {
						b.StopTimer()
						if err := dropCache(segmentPath(l.fs, dir, 1, gen)); err != nil {
							b.Fatal(err)
						}
						b.StartTimer()
					}
					var n int64
					if err := l.ReadGeneration("vm", gen, func(r Record) error {
						n += int64(len(r.Data))
						return nil
					}); err != nil {
						b.Fatal(err)
					}
					if n != genSize {
						b.Fatalf("read %d bytes, want %d", n, genSize)
					}
				}
			})
		}
		l.Close()
	}
}
