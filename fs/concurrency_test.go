package fs

import (
	"flag"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var seedFlag = flag.Uint64("drfs.seed", 0, "seed of the randomized tests; 0 picks one from the clock")

// testSeed returns the seed of a randomized test and logs how to replay it.
func testSeed(t *testing.T) uint64 {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -drfs.seed=%d)", seed, seed)
	return seed
}

// TestConcurrentOverlappingChanges runs goroutines that write random,
// overlapping, unaligned ranges (O_DIRECT, so the kernel sends them to the
// daemon in parallel), punch holes, zero ranges, copy ranges in and
// truncate, all on one disk with small blocks. The recorder pauses inside
// every call to widen race windows and checks that no two calls on one
// block overlap; the shadow, built from read-backs, must equal the file at
// the end. Without the block lock a write's record of a block could be
// overtaken by an older write's, leaving a stale block in the log.
//
// The goroutines work on one region of the file per round, so that a stale
// block is not healed by later writes before the end of the test.
func TestConcurrentOverlappingChanges(t *testing.T) {
	const (
		bs      = 512
		region  = 8 << 10
		rounds  = 32
		size    = rounds * region
		workers = 6
		ops     = 5 // per worker and round
		maxLen  = 3000
	)
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, rec *testRecorder) {
		writeSource(t, src, "d", randomBytes(rng, size))
		writeSource(t, src, "s", randomBytes(rng, size))
		// A random pause between the change of the backing file and
		// its record: without the block lock, a later write of the same
		// block would often be recorded first.
		rec.during = func(event) {
			if rand.IntN(2) == 0 {
				runtime.Gosched()
			} else {
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
			}
		}
	}})

	fds := make([]int, workers)
	sfds := make([]int, workers)
	for w := range workers {
		var err error
		if fds[w], err = unix.Open(tm.path("d"), unix.O_RDWR|unix.O_DIRECT, 0); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fds[w])
		if sfds[w], err = unix.Open(tm.path("s"), unix.O_RDONLY, 0); err != nil {
			t.Fatal(err)
		}
		defer unix.Close(sfds[w])
	}
	for round := range rounds {
		base := int64(round * region)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(seed, uint64(round*workers+w+1)))
				buf := randomBytes(rng, maxLen)
				fd, sfd := fds[w], sfds[w]
				for range ops {
					off, n := base+rng.Int64N(region-maxLen), 1+rng.Int64N(maxLen)
					var err error
					switch r := rng.IntN(100); {
					case r < 70:
						_, err = unix.Pwrite(fd, buf[:n], off)
					case r < 78:
						err = unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
					case r < 86:
						err = unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
					case r < 97:
						offIn := rng.Int64N(size - maxLen)
						_, err = unix.CopyFileRange(sfd, &offIn, fd, &off, int(n), 0)
					default:
						// Cuts the rest of the file; later rounds
						// write past the end and grow it again.
						err = unix.Ftruncate(fd, base+region-rng.Int64N(maxLen))
					}
					if err != nil {
						t.Errorf("op at %d+%d: %v", off, n, err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	d := tm.rec.mustDisk(t, "d")
	d.mu.Lock()
	t.Logf("%d changes recorded, at most %d in progress at once", len(d.events), d.maxInflight)
	d.mu.Unlock()
}

// TestDisjointWritesInParallel: O_DIRECT writes to different blocks reach
// the recorder at the same time; the block lock does not serialize them.
func TestDisjointWritesInParallel(t *testing.T) {
	const (
		bs      = 4096
		workers = 8
		hold    = 20 * time.Millisecond
	)
	rng := rand.New(rand.NewPCG(30, 31))
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, rec *testRecorder) {
		// Preallocated: the kernel serializes direct writes past the end.
		writeSource(t, src, "d", make([]byte, workers*bs))
		rec.during = func(e event) {
			if e.kind == evWritten {
				time.Sleep(hold)
			}
		}
	}})
	bufs := make([][]byte, workers)
	fds := make([]int, workers)
	for w := range workers {
		bufs[w] = alignedBuffer(t, rng, bs)
		fd, err := unix.Open(tm.path("d"), unix.O_RDWR|unix.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		fds[w] = fd
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := unix.Pwrite(fds[w], bufs[w], int64(w*bs)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	d := tm.rec.mustDisk(t, "d")
	d.mu.Lock()
	most := d.maxInflight
	d.mu.Unlock()
	t.Logf("%d writes holding the recorder %v each took %v; at most %d at once", workers, hold, elapsed, most)
	if most < 2 {
		t.Errorf("disjoint writes were serialized: at most %d in the recorder at once", most)
	}
}
