package dirstore

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestSparse: zero extents and zero blocks become holes in the replica, and
// Extents reports them at block precision, at the newest point and before.
func TestSparse(t *testing.T) {
	dir := t.TempDir()
	st := openT(t, dir)
	defer st.Close()
	const bs, n = 4096, 256 // a 1 MiB disk
	m := &storetest.VM{Name: "vm", Source: "s"}
	g := m.Next(1)
	g.Add("d", n*bs)
	rng := rand.New(rand.NewPCG(1, 5))
	for b := range uint64(n) {
		g.Write("d", b, storetest.RandomBlock(rng, bs))
	}
	must(t, g.Apply(bg, st))
	g = m.Next(2)
	g.Zero("d", 16, 224)                // blocks 16..239
	g.Write("d", 250, make([]byte, bs)) // a data block of zeros
	must(t, g.Apply(bg, st))
	m.CheckPoints(t, st)

	want := map[uint64][]target.Extent{
		1: {{Off: 0, Len: n * bs}},
		2: {{Off: 0, Len: 16 * bs}, {Off: 240 * bs, Len: 10 * bs}, {Off: 251 * bs, Len: 5 * bs}},
	}
	for gen, exts := range want {
		r, err := st.Open(bg, "vm", gen, "d")
		must(t, err)
		got, err := r.Extents()
		must(t, err)
		r.Close()
		if len(got) != len(exts) {
			t.Fatalf("point %d: extents %v, want %v", gen, got, exts)
		}
		for i := range got {
			if got[i] != exts[i] {
				t.Fatalf("point %d: extents %v, want %v", gen, got, exts)
			}
		}
	}
	var fi syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(dir, "vm", "replica", "d"), &fi))
	if used := fi.Blocks * 512; used > 40*bs {
		t.Errorf("the replica uses %d bytes for 31 blocks of data", used)
	}
}

// TestRealFullDisk fills a small tmpfs (as root; skipped elsewhere): a Stage
// or Commit that runs out of space returns a retryable ENOSPC and leaves the
// store at its last point; with space back, the retry succeeds.
func TestRealFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	for _, tc := range []struct {
		name string
		size string                                 // of the tmpfs: room for a 1 MiB disk, the stream and not the rest
		gen2 func(g *storetest.Gen, rng *rand.Rand) // on a 1 MiB disk d
	}{
		{"undo", "2600k", func(g *storetest.Gen, rng *rand.Rand) { // rewrites d: 1 MiB of undo data
			for b := range uint64(256) {
				g.Write("d", b, noise(rng, 4096))
			}
		}},
		{"apply", "3700k", func(g *storetest.Gen, rng *rand.Rand) { // grows d by 2 MiB of data: no undo data
			g.Resize("d", 3<<20)
			for b := uint64(256); b < 768; b++ {
				g.Write("d", b, noise(rng, 4096))
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+tc.size, "tmpfs", dir).CombinedOutput(); err != nil {
				t.Skipf("mount tmpfs: %v: %s", err, out)
			}
			defer exec.Command("umount", dir).Run()
			st := openT(t, dir)
			defer st.Close()
			rng := rand.New(rand.NewPCG(1, 8))
			m := &storetest.VM{Name: "vm", Source: "s"}
			g := m.Next(1)
			g.Add("d", 1<<20)
			for b := range uint64(256) {
				g.Write("d", b, noise(rng, 4096))
			}
			must(t, g.Apply(bg, st))

			// A stream bigger than the space left.
			big := m.Next(2)
			big.Add("big", 4<<20)
			for b := range uint64(1024) {
				big.Write("big", b, noise(rng, 4096))
			}
			must(t, big.Build())
			wantFull(t, "Stage of a stream larger than the space left", big.Stage(bg, st))
			checkClean(t, st, "vm")

			g = m.Next(2)
			tc.gen2(g, rng)
			must(t, g.Build())
			must(t, g.Stage(bg, st))
			wantFull(t, "Commit on a full disk", st.Commit(bg, "vm", 2, g.Commit()))
			m.CheckPoints(t, st)
			checkClean(t, st, "vm")

			if out, err := exec.Command("mount", "-o", "remount,size=16m", dir).CombinedOutput(); err != nil {
				t.Fatalf("remount: %v: %s", err, out)
			}
			must(t, st.Commit(bg, "vm", 2, g.Commit()))
			g.Committed()
			m.CheckPoints(t, st)
			checkClean(t, st, "vm")
		})
	}
}

// noise returns n incompressible bytes.
func noise(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b
}
