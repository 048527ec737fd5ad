package storetest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/target"
)

// ModelSums returns the sums target.Checksummer defines for the chunks of
// ranges of a disk with contents disk, computed plainly from the definition.
func ModelSums(disk []byte, chunk int64, ranges []target.Extent) []target.Sum {
	var out []target.Sum
	buf, zeros := make([]byte, chunk), make([]byte, chunk)
	for _, rg := range ranges {
		for off := rg.Off; off < rg.Off+rg.Len; off += chunk {
			clear(buf)
			if off < int64(len(disk)) {
				copy(buf, disk[off:min(off+chunk, int64(len(disk)))])
			}
			if bytes.Equal(buf, zeros) {
				out = append(out, target.ZeroSum)
			} else {
				out = append(out, xxh3.Hash128(buf).Bytes())
			}
		}
	}
	return out
}

// randomRanges returns sorted, disjoint, chunk-aligned ranges over the
// chunks of [0, end).
func randomRanges(rng *rand.Rand, chunk, end int64) []target.Extent {
	var out []target.Extent
	n := (end + chunk - 1) / chunk
	for c := int64(0); c < n; {
		c += rng.Int64N(3)
		if c >= n {
			break
		}
		k := 1 + rng.Int64N(min(4, n-c))
		out = append(out, target.Extent{Off: c * chunk, Len: k * chunk})
		c += k
	}
	return out
}

// testChecksums checks the sums of every disk of every point against the
// model, for a store that is a target.Checksummer.
func testChecksums(t *testing.T, st target.Store, rng *rand.Rand) {
	cs, ok := st.(target.Checksummer)
	if !ok {
		t.Skip("the store is not a target.Checksummer")
	}
	m := applied(t, st, rng, "vm-sums", 3, "d", "e/f")
	// Holes and zero data blocks, and a disk that shrinks and grows.
	g := m.Next(m.Newest().Gen + 1)
	g.Zero("d", 1, 3)
	// Block 5, or the last block of a disk that is shorter.
	if n := int64(len(g.Contents("d"))); n > 0 {
		g.Write("d", uint64(min(5, (n-1)/int64(m.blockSize()))), make([]byte, m.blockSize()))
	}
	g.Resize("e/f", int64(len(g.Contents("e/f")))-5000)
	g.Resize("e/f", int64(len(g.Contents("e/f")))+9000)
	must(t, g.Apply(ctx, st))

	check := func(p Point) {
		t.Helper()
		for _, disk := range slices.Sorted(func(yield func(string) bool) {
			for d := range p.Disks {
				if !yield(d) {
					return
				}
			}
		}) {
			want := p.Disks[disk]
			for _, chunk := range []int64{target.MinChunk, 4096, 64 << 10} {
				// The whole disk and a chunk past its end, then random ranges.
				whole := []target.Extent{{Off: 0, Len: (int64(len(want))/chunk + 1) * chunk}}
				for _, ranges := range [][]target.Extent{whole, randomRanges(rng, chunk, int64(len(want))+chunk)} {
					if len(ranges) == 0 {
						continue
					}
					got, err := cs.Checksums(ctx, m.Name, p.Gen, disk, chunk, ranges)
					must(t, err)
					if err := compareSums(got, ModelSums(want, chunk, ranges), chunk, ranges); err != nil {
						t.Fatalf("Checksums(%s point %d disk %s, chunk %d): %v", m.Name, p.Gen, disk, chunk, err)
					}
				}
			}
		}
	}
	for _, p := range m.Points {
		check(p)
	}
	// An older point's sums stay put while generations are committed.
	for range 2 {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, RandomOptions{Changes: 20, MaxGrow: 8192, MinSize: 512})
		must(t, g.Apply(ctx, st))
	}
	for _, p := range m.Points {
		check(p)
	}

	newest := m.Newest()
	// The most chunks one request may hold, most of them past the end.
	most := []target.Extent{{Off: 0, Len: target.MaxSums * target.MinChunk}}
	got, err := cs.Checksums(ctx, m.Name, newest.Gen, "d", target.MinChunk, most)
	must(t, err)
	must(t, compareSums(got, ModelSums(newest.Disks["d"], target.MinChunk, most), target.MinChunk, most))

	// Requests that break the rules are permanent errors.
	for _, bad := range []struct {
		chunk  int64
		ranges []target.Extent
	}{
		{0, []target.Extent{{Off: 0, Len: 4096}}},
		{4000, []target.Extent{{Off: 0, Len: 4000}}},
		{256, []target.Extent{{Off: 0, Len: 256}}},
		{target.MaxChunk * 2, []target.Extent{{Off: 0, Len: target.MaxChunk * 2}}},
		{4096, []target.Extent{{Off: 100, Len: 4096}}},
		{4096, []target.Extent{{Off: 0, Len: 100}}},
		{4096, []target.Extent{{Off: 0, Len: 0}}},
		{4096, []target.Extent{{Off: -4096, Len: 4096}}},
		{4096, []target.Extent{{Off: 8192, Len: 4096}, {Off: 0, Len: 4096}}},
		{4096, []target.Extent{{Off: 0, Len: 8192}, {Off: 4096, Len: 4096}}},
		{target.MinChunk, []target.Extent{{Off: 0, Len: (target.MaxSums + 1) * target.MinChunk}}},
		{4096, []target.Extent{{Off: 1 << 62, Len: 4096}}},
	} {
		_, err := cs.Checksums(ctx, m.Name, newest.Gen, "d", bad.chunk, bad.ranges)
		wantPermanent(t, fmt.Sprintf("Checksums with chunk %d and ranges %v", bad.chunk, bad.ranges), err)
	}
	one := []target.Extent{{Off: 0, Len: 4096}}
	_, err = cs.Checksums(ctx, "vm-nope", 1, "d", 4096, one)
	wantKind(t, "Checksums of an unknown VM", err, target.ErrNotFound)
	_, err = cs.Checksums(ctx, m.Name, newest.Gen+1, "d", 4096, one)
	wantKind(t, "Checksums of an unknown point", err, target.ErrNotFound)
	_, err = cs.Checksums(ctx, m.Name, newest.Gen, "nope", 4096, one)
	wantKind(t, "Checksums of an unknown disk", err, target.ErrNotFound)
	for _, bad := range BadNames[:6] {
		_, err = cs.Checksums(ctx, bad, newest.Gen, "d", 4096, one)
		wantKind(t, fmt.Sprintf("Checksums of VM %q", bad), err, target.ErrBadName)
		_, err = cs.Checksums(ctx, m.Name, newest.Gen, bad, 4096, one)
		wantKind(t, fmt.Sprintf("Checksums of disk %q", bad), err, target.ErrBadName)
	}
	m.CheckPoints(t, st)
}

func compareSums(got, want []target.Sum, chunk int64, ranges []target.Extent) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d sums for ranges %v, want %d", len(got), ranges, len(want))
	}
	i := 0
	for _, rg := range ranges {
		for off := rg.Off; off < rg.Off+rg.Len; off += chunk {
			if got[i] != want[i] {
				return fmt.Errorf("chunk at %d: sum %x, want %x", off, got[i], want[i])
			}
			i++
		}
	}
	return nil
}
