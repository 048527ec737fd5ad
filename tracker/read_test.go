package tracker

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// readOrdered reads a frozen generation, checks that each disk's records
// come together, data and zero records in strictly ascending,
// non-overlapping block order, then the size, and applies them to r.
func readOrdered(t testing.TB, l *Log, vm string, gen uint64, r replica) error {
	t.Helper()
	seen := map[string]bool{}
	lastDisk, next, sized := "", uint64(0), false
	grow := func(name string, n int64) {
		if int64(len(r[name])) < n {
			r[name] = append(r[name], make([]byte, n-int64(len(r[name])))...)
		}
	}
	return l.ReadGeneration(vm, gen, func(rec Record) error {
		if rec.Disk != lastDisk {
			if lastDisk != "" && !sized {
				return fmt.Errorf("disk %s ended without its size", lastDisk)
			}
			if seen[rec.Disk] {
				return fmt.Errorf("disk %s comes back after another disk", rec.Disk)
			}
			seen[rec.Disk] = true
			lastDisk, next, sized = rec.Disk, 0, false
		}
		if sized {
			return fmt.Errorf("record %v of %s after its size", rec.Kind, rec.Disk)
		}
		switch rec.Kind {
		case KindData, KindZero:
			if rec.Blocks == 0 || rec.Block < next {
				return fmt.Errorf("%s: record %v of blocks %d+%d after block %d: not in ascending order",
					rec.Disk, rec.Kind, rec.Block, rec.Blocks, next)
			}
			next = rec.Block + rec.Blocks
			lo, hi := int64(rec.Block)*l.bs, int64(next)*l.bs
			grow(rec.Disk, hi)
			if rec.Kind == KindZero {
				clear(r[rec.Disk][lo:hi])
				break
			}
			if int64(len(rec.Data)) != hi-lo {
				return fmt.Errorf("data record of %d blocks has %d bytes", rec.Blocks, len(rec.Data))
			}
			copy(r[rec.Disk][lo:hi], rec.Data)
		case KindSize:
			grow(rec.Disk, rec.Size)
			r[rec.Disk] = r[rec.Disk][:rec.Size]
			sized = true
		case KindRemoved:
			delete(r, rec.Disk)
			sized = true
		}
		return nil
	})
}

// openDir opens a log in a real directory (where ReadGeneration reads
// ahead through the page cache), with a small read-ahead window so that a
// generation spans many windows.
func openDir(t testing.TB, bs int, window int64) *Log {
	t.Helper()
	l, err := Open(Options{Dir: t.TempDir(), Source: t.TempDir(), BlockSize: bs, FS: vfs.Default})
	if err != nil {
		t.Fatal(err)
	}
	l.readAhead = window
	return l
}

// TestReadGenerationRandom writes a large generation of scattered writes
// (most of a single block, some longer, overwrites and zero ranges, in
// random order over two disks), so that its segment is in an order
// unrelated to the blocks, and checks that reading it gives every disk's
// records in ascending block order and exactly the disks' contents; twice
// at the same time, with windows of several sizes.
func TestReadGenerationRandom(t *testing.T) {
	for _, c := range []struct {
		name   string
		bs     int
		window int64
		mem    bool
	}{
		{"bs4096-window5blocks", 4096, 5*4096 + 100, false},
		{"bs512-window64KiB", 512, 64 << 10, false},
		{"bs4096-memfs", 4096, 3 * 4096, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(testSeed(t), uint64(c.bs)))
			var l *Log
			if c.mem {
				l = openMem(t, vfs.NewMem(), c.bs)
				l.readAhead = c.window
			} else {
				l = openDir(t, c.bs, c.window)
			}
			defer l.Close()
			B := int64(c.bs)
			const blocks = 3000
			names := []string{"a.img", "b.img"}
			imgs := map[string]*image{}
			base := replica{}
			disks := map[string]*Disk{}
			for _, n := range names {
				b := make([]byte, blocks*B)
				fillRandom(rng, b)
				imgs[n] = &image{b: b}
				base[n] = bytes.Clone(b)
				d, err := l.OpenDisk("vm/"+n, int64(len(b)))
				if err != nil {
					t.Fatal(err)
				}
				disks[n] = d
			}
			steps := 4000
			if raceEnabled || testing.Short() {
				steps = 1200
			}
			for i := 0; i < steps; i++ {
				n := names[rng.IntN(2)]
				img, d := imgs[n], disks[n]
				first := rng.Int64N(blocks - 16)
				count := int64(1)
				if rng.IntN(10) == 0 {
					count = 1 + rng.Int64N(16)
				}
				off, size := first*B, count*B
				if rng.IntN(20) == 0 { // unaligned: partial blocks read back
					off += rng.Int64N(B)
					size -= rng.Int64N(B)
				}
				if rng.IntN(40) == 0 {
					img.punch(off, size)
					d.Zeroed(off, size, img)
					continue
				}
				data := make([]byte, size)
				fillRandom(rng, data)
				img.writeAt(data, off)
				d.Written(off, data, img)
			}
			gen, err := l.Rotate("vm")
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			reps := make([]replica, 2)
			errs := make([]error, 2)
			for i := range reps {
				reps[i] = replica{}
				for n, b := range base {
					reps[i][n] = bytes.Clone(b)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = readOrdered(t, l, "vm", gen, reps[i])
				}()
			}
			wg.Wait()
			for i := range reps {
				if errs[i] != nil {
					t.Fatalf("read %d: %v", i, errs[i])
				}
				for _, n := range names {
					if diff := firstDiff(reps[i][n], imgs[n].b, B); diff != "" {
						t.Fatalf("read %d, %s: %s", i, n, diff)
					}
				}
			}
		})
	}
}

// TestReadWhileRotating reads frozen generations of scattered writes again
// and again while other goroutines write to the active generation, rotate
// it and drop older generations: each read must give exactly the blocks
// the generation froze, in order.
func TestReadWhileRotating(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewPCG(testSeed(t), 7))
	l := openDir(t, bs, 7*bs)
	defer l.Close()
	const blocks = 1024
	img := &image{b: make([]byte, blocks*bs)}
	d, err := l.OpenDisk("vm/disk.img", blocks*bs)
	if err != nil {
		t.Fatal(err)
	}
	write := func(rng *rand.Rand, n int) {
		for i := 0; i < n; i++ {
			data := make([]byte, bs*(1+rng.IntN(2)))
			fillRandom(rng, data)
			off := rng.Int64N(blocks-2) * bs
			img.writeAt(data, off)
			d.Written(off, data, img)
		}
	}
	// frozen generations and the image at each cut, to check reads.
	type cut struct {
		gen  uint64
		prev []byte // the image at the previous cut
		img  []byte
	}
	var mu sync.Mutex
	var cuts []cut
	prev := img.bytes()
	rotations, writes := 12, 1000
	if raceEnabled || testing.Short() {
		rotations, writes = 6, 300
	}

	stop := make(chan struct{})
	var readers sync.WaitGroup
	var reads [3]int
	for r := range reads {
		readers.Add(1)
		go func() {
			defer readers.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				mu.Lock()
				if len(cuts) == 0 {
					mu.Unlock()
					runtime.Gosched()
					continue
				}
				// Readers keep to the two newest cuts; the writer drops
				// only older ones, as the shipper drops only what no read
				// is using.
				c := cuts[len(cuts)-1-rng.IntN(min(2, len(cuts)))]
				mu.Unlock()
				rep := replica{"disk.img": bytes.Clone(c.prev)}
				if err := readOrdered(t, l, "vm", c.gen, rep); err != nil {
					t.Errorf("reading generation %d: %v", c.gen, err)
					return
				}
				if diff := firstDiff(rep["disk.img"], c.img, bs); diff != "" {
					t.Errorf("generation %d: %s", c.gen, diff)
					return
				}
				reads[r]++
			}
		}()
	}
	for i := 0; i < rotations; i++ {
		write(rng, writes)
		gen, err := l.Rotate("vm")
		if err != nil {
			t.Fatal(err)
		}
		cur := img.bytes()
		mu.Lock()
		cuts = append(cuts, cut{gen: gen, prev: prev, img: cur})
		var old []uint64
		for len(cuts) > 4 {
			old = append(old, cuts[0].gen)
			cuts = cuts[1:]
		}
		mu.Unlock()
		prev = cur
		for _, g := range old {
			if err := l.Drop("vm", g); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stop)
	readers.Wait()
	t.Logf("reads per reader: %v", reads)
}

// TestReadMergesNeighbours: blocks written one by one and out of order
// (so in separate slots of the segment) come back as one record per run of
// neighbouring blocks, at most a read chunk long, with each block's data in
// its place.
func TestReadMergesNeighbours(t *testing.T) {
	l := openMem(t, vfs.NewMem(), 4096)
	defer l.Close()
	const B = 4096
	chunk := uint64(l.readChunk() / B)
	img := &image{b: make([]byte, (chunk+40)*B)}
	d, err := l.OpenDisk("vm/a.img", int64(len(img.b)))
	if err != nil {
		t.Fatal(err)
	}
	write := func(block uint64) {
		data := bytes.Repeat([]byte{byte(block)}, B)
		img.writeAt(data, int64(block)*B)
		d.Written(int64(block)*B, data, img)
	}
	// 7, 5, 6: one run; 9 alone; 20 .. 20+chunk+2: a run longer than a chunk.
	for _, b := range []uint64{7, 5, 6, 9} {
		write(b)
	}
	for b := uint64(20 + chunk + 1); b >= 20; b-- {
		write(b)
	}
	gen, err := l.Rotate("vm")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = l.ReadGeneration("vm", gen, func(r Record) error {
		if r.Kind != KindData {
			return nil
		}
		got = append(got, fmt.Sprintf("%d+%d", r.Block, r.Blocks))
		for i := uint64(0); i < r.Blocks; i++ {
			if p := r.Data[i*B : (i+1)*B]; !bytes.Equal(p, bytes.Repeat([]byte{byte(r.Block + i)}, B)) {
				return fmt.Errorf("block %d of record %d+%d holds %d", r.Block+i, r.Block, r.Blocks, p[0])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"5+3", "9+1", fmt.Sprintf("20+%d", chunk), fmt.Sprintf("%d+2", 20+chunk)}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("data records %v, want %v", got, want)
	}
}
