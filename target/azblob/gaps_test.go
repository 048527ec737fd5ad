package azblob

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/drfs-project/drfs/target/storetest"
)

// TestGapFill commits generations of scattered blocks over a disk that is
// partly allocated, partly a hole, with zero extents, so that page writes
// bridge gaps read from the blob, gaps over holes and zero extents: every
// point must read back as the model says, with fewer writes than blocks.
func TestGapFill(t *testing.T) {
	azuriteEndpoint(t)
	st := newTestStore(t, Options{PageWrite: 64 << 10, Gap: 16 << 10, Parallel: 3})
	rng := rand.New(rand.NewPCG(3, 5))
	m := &storetest.VM{Name: "vm", Source: "source-a"}
	g := m.Next(1)
	const bs, blocks = 4096, 256
	g.Add("d", blocks*bs+1000)          // a partial last block
	for b := range uint64(blocks / 2) { // the first half allocated, the second a hole
		g.Write("d", b, storetest.RandomBlock(rng, bs))
	}
	must(t, g.Apply(bg, st))
	for gen := uint64(2); gen <= 5; gen++ {
		g = m.Next(gen)
		n := 0
		for b := uint64(rng.IntN(3)); b <= blocks; b += 1 + uint64(rng.IntN(6)) {
			switch rng.IntN(10) {
			case 0:
				g.Zero("d", b, 1+uint64(rng.IntN(6)))
			case 1:
				g.Write("d", b, make([]byte, bs))
			default:
				g.Write("d", b, storetest.RandomBlock(rng, bs))
				n++
			}
		}
		before := st.Stats()
		if gen == 5 {
			// Cut after two page writes, finished by another process.
			must(t, g.Build())
			must(t, g.Stage(bg, st))
			ctx, cancel := context.WithCancel(bg)
			st.pageHook = func(seq int64) error {
				if seq == 2 {
					cancel()
				}
				return nil
			}
			wantRetryable(t, "cut commit", st.Commit(ctx, "vm", gen, g.Commit()))
			cancel()
			m.CheckPoints(t, st)
			s2 := reopen(t, st)
			must(t, s2.Commit(bg, "vm", gen, g.Commit()))
			g.Committed()
			m.CheckPoints(t, s2)
			if s2.Stats().GapReads == 0 {
				t.Errorf("finishing the cut commit read no gap")
			}
			continue
		}
		must(t, g.Apply(bg, st))
		after := st.Stats()
		writes := after.PageWrites - before.PageWrites
		t.Logf("generation %d: %d data blocks in %d page writes, %d gap reads, %d clears", gen, n, writes, after.GapReads-before.GapReads, after.Clears-before.Clears)
		if writes*2 > int64(n) || after.GapReads == before.GapReads {
			t.Errorf("generation %d: %d data blocks in %d page writes with %d gap reads: gaps not bridged", gen, n, writes, after.GapReads-before.GapReads)
		}
		m.CheckPoints(t, st)
	}
}
