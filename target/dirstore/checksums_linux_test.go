package dirstore

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestChecksumsSparse: Checksums reads only the allocated parts of a
// sparse replica, at the newest point and at an older one (through the
// undo data), and its sums are the model's.
func TestChecksumsSparse(t *testing.T) {
	st := openT(t, t.TempDir())
	defer st.Close()
	const bs = 4096
	const size = 16 << 20
	m := &storetest.VM{Name: "vm", Source: "s"}
	g := m.Next(1)
	g.Add("d", size)
	rng := rand.New(rand.NewPCG(2, 7))
	for range 40 {
		g.Write("d", rng.Uint64N(size/bs), storetest.RandomBlock(rng, bs))
	}
	must(t, g.Apply(bg, st))
	g = m.Next(2)
	for range 10 {
		g.Write("d", rng.Uint64N(size/bs), storetest.RandomBlock(rng, bs))
	}
	g.Write("d", 7, make([]byte, bs)) // allocated, but zeros
	must(t, g.Apply(bg, st))

	whole := []target.Extent{{Off: 0, Len: size}}
	for _, tc := range []struct {
		p     storetest.Point
		limit int64 // bytes Checksums may read
	}{
		{m.Points[1], 51 * bs},
		{m.Points[0], 50 * bs}, // the replica's blocks, and the undo data over some of them
	} {
		for _, chunk := range []int64{bs, 1 << 20} {
			st.sumRead.Store(0)
			sums, err := st.Checksums(bg, "vm", tc.p.Gen, "d", chunk, whole)
			must(t, err)
			if err := compareSums(sums, storetest.ModelSums(tc.p.Disks["d"], chunk, whole)); err != nil {
				t.Fatalf("point %d, chunks of %d: %v", tc.p.Gen, chunk, err)
			}
			if n := st.sumRead.Load(); n > tc.limit {
				t.Fatalf("point %d, chunks of %d: read %d bytes of a disk with %d bytes of data", tc.p.Gen, chunk, n, tc.limit)
			}
		}
	}
}

func compareSums(got, want []target.Sum) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d sums, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("sum %d is %x, want %x", i, got[i], want[i])
		}
	}
	return nil
}
