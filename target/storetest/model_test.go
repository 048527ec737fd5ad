package storetest

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/drfs-project/drfs/internal/frame"
)

// TestModelStreams checks the model against its own streams: decoding the
// stream of each changed disk and applying it to the disk before (resize,
// then records) gives the disk the model says.
func TestModelStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(Seed(t), 1))
	m, g := NewVM(rng, "vm", "a", "b/c")
	prev := map[string][]byte{}
	for gen := uint64(1); gen <= 20; gen++ {
		if gen > 1 {
			g = m.Next(gen)
			g.RandomGen(rng, RandomOptions{Changes: 10, MaxGrow: 9000, Unchanged: 0.2})
			switch gen {
			case 5: // shrink and grow again
				g.Resize("b/c", 100)
				g.Resize("b/c", 9000)
			case 7:
				g.Remove("a")
				g.Add("a", 5000)
			}
		}
		if err := g.Build(); err != nil {
			t.Fatal(err)
		}
		for _, d := range g.StagedDisks() {
			fr, err := frame.NewReader(bytes.NewReader(g.Streams[d]), frame.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			h := fr.Header()
			img := prev[d]
			if h.Base == 0 {
				img = nil
			} else if h.Base != m.Newest().Gen {
				t.Fatalf("gen %d disk %s: base %d, newest %d", gen, d, h.Base, m.Newest().Gen)
			}
			img = append(bytes.Clone(img), make([]byte, max(0, int(h.DiskSize)-len(img)))...)[:h.DiskSize]
			bs := uint64(h.BlockSize)
			for {
				rec, err := fr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if rec.Kind == frame.KindData {
					copy(img[rec.Block*bs:], rec.Data)
				} else {
					clear(img[rec.Block*bs : min((rec.Block+rec.Count)*bs, h.DiskSize)])
				}
			}
			if !bytes.Equal(img, g.Contents(d)) {
				t.Fatalf("gen %d disk %s: the stream does not give the model's contents", gen, d)
			}
		}
		g.Committed()
		prev = m.Newest().Disks
	}
}
