package chunksum

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/drfs-project/drfs/target"
)

// TestSums: the sums of a sparse disk, read only where its extents say, are
// the sums of its bytes chunk by chunk; a chunk of zeros is ZeroSum.
func TestSums(t *testing.T) {
	const size, chunk = 1 << 20, 4096
	disk := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	exts := []target.Extent{{Off: 8192, Len: 12288}, {Off: 512 << 10, Len: 100}}
	for _, e := range exts {
		for i := e.Off; i < e.Off+e.Len; i++ {
			disk[i] = byte(rng.Uint32())
		}
	}
	ranges := []target.Extent{{Off: 0, Len: 64 << 10}, {Off: 512 << 10, Len: 8192}}
	sums, read, err := Sums(context.Background(), bytes.NewReader(disk), size, exts, chunk, ranges)
	if err != nil {
		t.Fatal(err)
	}
	var want []target.Sum
	for _, rg := range ranges {
		for off := rg.Off; off < rg.Off+rg.Len; off += chunk {
			want = append(want, Of(disk[off:off+chunk]))
		}
	}
	if len(sums) != len(want) {
		t.Fatalf("%d sums, want %d", len(sums), len(want))
	}
	for i := range want {
		if sums[i] != want[i] {
			t.Errorf("sum %d differs", i)
		}
	}
	if read != 12288+100 {
		t.Errorf("read %d bytes, want only the extents' %d", read, 12288+100)
	}
	if Of(make([]byte, chunk)) != target.ZeroSum || Of(disk[8192:8192+chunk]) == target.ZeroSum {
		t.Error("ZeroSum is not the sum of zeros alone")
	}
}

// TestCheckRequest: requests that break the rules are permanent errors.
func TestCheckRequest(t *testing.T) {
	for _, c := range []struct {
		chunk  int64
		ranges []target.Extent
	}{
		{3000, nil},
		{4096, []target.Extent{{Off: 1, Len: 4096}}},
		{4096, []target.Extent{{Off: 8192, Len: 4096}, {Off: 0, Len: 4096}}},
		{4096, []target.Extent{{Off: 0, Len: 0}}},
		{4096, []target.Extent{{Off: MaxOffset, Len: 4096}}},
	} {
		err := CheckRequest(c.chunk, c.ranges)
		var re *RequestError
		if !errors.As(err, &re) || !target.IsPermanent(err) {
			t.Errorf("CheckRequest(%d, %v) = %v, want a permanent RequestError", c.chunk, c.ranges, err)
		}
	}
	if err := CheckRequest(4096, []target.Extent{{Off: 0, Len: 8192}}); err != nil {
		t.Errorf("a good request: %v", err)
	}
}
