package shipper

import (
	"context"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// zeroImage is a backing file of zeros: aligned writes never read it.
type zeroImage struct{}

func (zeroImage) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

const (
	benchGen  = 256 << 20 // bytes of data in a generation
	benchDisk = 1 << 30   // the disk the writes land on
)

var benchShapes = []struct {
	name   string
	extent int64 // bytes per write, at a random aligned offset
}{
	{"4KiB-random", 4 << 10},
	{"1MiB-extents", 1 << 20},
}

// benchData is what the writes carry: each 4 KiB holds 2 KiB of random
// bytes and 2 KiB of zeros, so LZ4 has something to do.
func benchData() []byte {
	rng := rand.New(rand.NewPCG(1, 1))
	b := make([]byte, benchGen)
	for off := 0; off < len(b); off += 4 << 10 {
		fillRandom(rng, b[off:off+2<<10])
	}
	return b
}

// fillGeneration writes benchGen bytes in extents of the given size at
// random aligned offsets of the disk and freezes them. Extents may
// overlap, so the generation holds a little less.
func fillGeneration(b *testing.B, e *env, d *tracker.Disk, rng *rand.Rand, data []byte, extent int64) uint64 {
	b.Helper()
	for off := int64(0); off < int64(len(data)); off += extent {
		at := rng.Int64N(benchDisk/extent) * extent
		d.Written(at, data[off:off+extent], zeroImage{})
	}
	gen, err := e.log.Rotate("bench")
	if err != nil {
		b.Fatal(err)
	}
	return gen
}

func benchEnv(b *testing.B) (*env, *tracker.Disk) {
	e := newEnv(b, 4096)
	d, err := e.log.OpenDisk("bench/disk.img", benchDisk)
	if err != nil {
		b.Fatal(err)
	}
	return e, d
}

// BenchmarkShip drains a generation of 256 MiB from the log to a
// directory store: encode, LZ4, stage (written and synced), commit (undo
// data, apply, sync).
func BenchmarkShip(b *testing.B) {
	data := benchData()
	for _, shape := range benchShapes {
		b.Run(shape.name, func(b *testing.B) {
			e, d := benchEnv(b)
			rng := rand.New(rand.NewPCG(2, 2))
			sh := New(e.source(), e.store, Options{Source: "bench"})
			ctx := context.Background()
			var total Stats
			b.SetBytes(benchGen)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				// Keep one point, so undo data does not pile up.
				if _, err := e.store.Points(ctx, "bench"); err == nil {
					if err := e.store.Expire(ctx, "bench", time.Now().Add(time.Hour), 1); err != nil {
						b.Fatal(err)
					}
				}
				fillGeneration(b, e, d, rng, data, shape.extent)
				b.StartTimer()
				st, err := sh.Ship(ctx, "bench")
				if err != nil {
					b.Fatal(err)
				}
				total.Add(st)
			}
			b.StopTimer()
			b.ReportMetric(total.Ratio(), "lz4-ratio")
			b.ReportMetric(float64(total.WireBytes)/float64(b.N)/(1<<20), "wire-MiB/op")
		})
	}
}

// BenchmarkReadGeneration is the baseline: the same generations read from
// the log and thrown away.
func BenchmarkReadGeneration(b *testing.B) {
	data := benchData()
	for _, shape := range benchShapes {
		b.Run(shape.name, func(b *testing.B) {
			e, d := benchEnv(b)
			gen := fillGeneration(b, e, d, rand.New(rand.NewPCG(2, 2)), data, shape.extent)
			src := e.source()
			b.SetBytes(benchGen)
			b.ResetTimer()
			for range b.N {
				err := src.ReadGeneration("bench", gen, func(r tracker.Record) error {
					_, err := io.Discard.Write(r.Data)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// nullStore takes every stream and commit and keeps nothing.
type nullStore struct{ target.Store }

func (nullStore) Stage(_ context.Context, _ string, _ uint64, _ string, r io.Reader) error {
	_, err := io.Copy(io.Discard, r)
	return err
}

func (nullStore) Points(context.Context, string) ([]target.Point, error) {
	return nil, target.ErrNotFound
}

func (nullStore) Commit(context.Context, string, uint64, target.Commit) error { return nil }

// BenchmarkShipNull ships the same generations to a store that throws the
// streams away: the shipper's own cost (read, encode, LZ4, pipe).
func BenchmarkShipNull(b *testing.B) {
	data := benchData()
	for _, shape := range benchShapes {
		b.Run(shape.name, func(b *testing.B) {
			e, d := benchEnv(b)
			rng := rand.New(rand.NewPCG(2, 2))
			sh := New(e.source(), nullStore{}, Options{Source: "bench"})
			var total Stats
			b.SetBytes(benchGen)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				fillGeneration(b, e, d, rng, data, shape.extent)
				b.StartTimer()
				st, err := sh.Ship(context.Background(), "bench")
				if err != nil {
					b.Fatal(err)
				}
				total.Add(st)
			}
			b.StopTimer()
			b.ReportMetric(total.Ratio(), "lz4-ratio")
		})
	}
}
