package tracker

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestConcurrentRotate races writers on the same and different blocks of
// two disks with rotations, as fs would call the recorder (a lock on each
// block a change touches). Every write must land wholly in one generation,
// and replaying all generations must give the final images.
func TestConcurrentRotate(t *testing.T) {
	const (
		bs      = 4096
		blocks  = 48
		writers = 6
		writes  = 250
	)
	seed := testSeed(t)
	l := openMem(t, vfs.NewMem(), bs)
	defer l.Close()

	type cdisk struct {
		name  string
		img   *image
		d     *Disk
		locks [blocks]sync.Mutex
		// order[b] lists the writes of block b in the order they happened
		// (appended under the block's lock).
		order [blocks][]uint64
	}
	var disks [2]*cdisk
	rep := replica{}
	for i, name := range []string{"a.img", "b.img"} {
		img := &image{b: make([]byte, blocks*bs)}
		d, err := l.OpenDisk("vm/"+name, blocks*bs)
		if err != nil {
			t.Fatal(err)
		}
		disks[i] = &cdisk{name: name, img: img, d: d}
		rep[name] = make([]byte, blocks*bs)
	}

	// writeBlocks[id] = the blocks write id covered, and its disk.
	type wr struct {
		disk  int
		first int
		n     int
	}
	var writesMu sync.Mutex
	writeInfo := map[uint64]wr{}
	var nextID atomic.Uint64

	var gensMu sync.Mutex
	var gens []uint64
	stop := make(chan struct{})
	rotDone := make(chan struct{})
	go func() {
		defer close(rotDone)
		for {
			select {
			case <-stop:
				return
			default:
			}
			g, err := l.Rotate("vm")
			if err != nil {
				t.Error(err)
				return
			}
			gensMu.Lock()
			gens = append(gens, g)
			gensMu.Unlock()
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := make([]byte, 4*bs)
			for i := 0; i < writes; i++ {
				cd := disks[rng.IntN(2)]
				di := 0
				if cd == disks[1] {
					di = 1
				}
				// Half the writes go to a few hot blocks.
				first := rng.IntN(blocks)
				if rng.IntN(2) == 0 {
					first = rng.IntN(4)
				}
				n := 1 + rng.IntN(min(4, blocks-first))
				id := nextID.Add(1)
				writesMu.Lock()
				writeInfo[id] = wr{di, first, n}
				writesMu.Unlock()
				p := buf[:n*bs]
				for k := 0; k < n; k++ {
					blk := p[k*bs : (k+1)*bs]
					fillRandom(rng, blk)
					binary.LittleEndian.PutUint64(blk, id)
				}
				for k := first; k < first+n; k++ {
					cd.locks[k].Lock()
				}
				off := int64(first) * bs
				cd.img.mu.Lock()
				copy(cd.img.b[off:], p)
				cd.img.mu.Unlock()
				cd.d.Written(off, p, cd.img)
				for k := first; k < first+n; k++ {
					cd.order[k] = append(cd.order[k], id)
					cd.locks[k].Unlock()
				}
				if rng.IntN(50) == 0 {
					if err := cd.d.Sync(); err != nil {
						t.Error(err)
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	<-rotDone
	g, err := l.Rotate("vm")
	if err != nil {
		t.Fatal(err)
	}
	gens = append(gens, g)

	pos := func(di, b int, id uint64) int {
		for i, x := range disks[di].order[b] {
			if x == id {
				return i
			}
		}
		return -1
	}
	diskIndex := map[string]int{"a.img": 0, "b.img": 1}
	for _, gen := range gens {
		// stamp[disk][block] = the write whose data the generation holds.
		var stamp [2]map[int]uint64
		stamp[0], stamp[1] = map[int]uint64{}, map[int]uint64{}
		err := l.ReadGeneration("vm", gen, func(r Record) error {
			if r.Kind != KindData {
				return nil
			}
			for k := uint64(0); k < r.Blocks; k++ {
				stamp[diskIndex[r.Disk]][int(r.Block+k)] = binary.LittleEndian.Uint64(r.Data[k*bs:])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for di := range stamp {
			for _, id := range stamp[di] {
				w := writeInfo[id]
				for b := w.first; b < w.first+w.n; b++ {
					s, ok := stamp[w.disk][b]
					if !ok || pos(w.disk, b, s) < pos(w.disk, b, id) {
						t.Fatalf("generation %d holds write %d (blocks %d+%d of %s) but not its block %d (has write %d)",
							gen, id, w.first, w.n, disks[w.disk].name, b, s)
					}
				}
			}
		}
		replay(t, l, "vm", gen, rep)
	}
	for _, cd := range disks {
		if diff := firstDiff(rep[cd.name], cd.img.b, bs); diff != "" {
			t.Fatalf("%s: %s", cd.name, diff)
		}
	}
	if len(gens) < 3 {
		t.Logf("only %d generations: the rotations did not overlap the writes much", len(gens))
	}
}
