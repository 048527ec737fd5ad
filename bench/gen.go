package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// GoEngine is the built-in generator, used when fio is not installed: for
// queue depth N, N goroutines each keep one pread or pwrite in flight on the
// file opened with O_DIRECT, from a buffer aligned for it; a write job ends
// with an fsync, counted in its time. It runs in the
// benchmark's process, so a CPU profile of a mount taken while it runs shows
// the generator too.
type GoEngine struct{}

// Name implements Engine.
func (GoEngine) Name() string {
	return "go (pread/pwrite from N goroutines, O_DIRECT, fsync at the end of write jobs)"
}

// directAlign is the buffer and offset alignment that O_DIRECT needs on
// every Linux filesystem drfs runs on (logical block size up to 4 KiB).
const directAlign = 4096

// Run implements Engine.
func (GoEngine) Run(ctx context.Context, path string, size int64, w Workload, lim Limit) (Measure, error) {
	if w.BlockSize <= 0 || w.BlockSize%directAlign != 0 {
		return Measure{}, fmt.Errorf("workload %s: block size %d is not a multiple of %d", w.Name, w.BlockSize, directAlign)
	}
	blocks := size / int64(w.BlockSize)
	if blocks == 0 {
		return Measure{}, fmt.Errorf("workload %s: file of %d bytes is smaller than one %d-byte request", w.Name, size, w.BlockSize)
	}
	flags := os.O_RDONLY
	if w.Write {
		flags = os.O_RDWR
	}
	f, err := os.OpenFile(path, flags|syscall.O_DIRECT, 0)
	if err != nil {
		return Measure{}, err
	}
	defer f.Close()

	var (
		stop      atomic.Bool
		remaining atomic.Int64 // requests left to issue when lim.Ops > 0
		next      atomic.Int64 // next block of a sequential job
		mu        sync.Mutex
		total     Measure
		latency   time.Duration
		firstErr  error
	)
	remaining.Store(lim.Ops)
	// The job's time starts before its timer, so that a job of Runtime
	// never reports less.
	start := time.Now()
	if lim.Runtime > 0 {
		t := time.AfterFunc(lim.Runtime, func() { stop.Store(true) })
		defer t.Stop()
	}
	jobDone := make(chan struct{})
	defer close(jobDone)
	go func() {
		select {
		case <-ctx.Done():
			stop.Store(true)
		case <-jobDone:
		}
	}()

	worker := func(id int) {
		buf := alignedBuffer(w.BlockSize)
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(id)))
		fillRandom(buf, uint64(id))
		var ops int64
		var lat time.Duration
		var err error
		for !stop.Load() {
			if lim.Ops > 0 && remaining.Add(-1) < 0 {
				break
			}
			var block int64
			if w.Random {
				block = rng.Int64N(blocks)
			} else {
				block = (next.Add(1) - 1) % blocks
			}
			off := block * int64(w.BlockSize)
			start := time.Now()
			if w.Write {
				// A different first word in every request, so that no layer
				// below can deduplicate the data (as fio's scramble_buffers).
				binary.LittleEndian.PutUint64(buf, uint64(off)^uint64(ops)<<20^uint64(id))
				_, err = f.WriteAt(buf, off)
			} else {
				_, err = f.ReadAt(buf, off)
			}
			lat += time.Since(start)
			if err != nil {
				stop.Store(true)
				break
			}
			ops++
		}
		mu.Lock()
		defer mu.Unlock()
		total.Ops += ops
		latency += lat
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}

	var wg sync.WaitGroup
	for i := range max(w.QueueDepth, 1) {
		wg.Go(func() { worker(i) })
	}
	wg.Wait()
	if w.Write && firstErr == nil {
		// Like fio's end_fsync: a write job is done when what it wrote is
		// durable, which is what a target that buffers has to pay for.
		firstErr = f.Sync()
	}
	total.Elapsed = time.Since(start)
	total.Bytes = total.Ops * int64(w.BlockSize)
	if total.Ops > 0 {
		total.MeanLatency = latency / time.Duration(total.Ops)
	}
	if firstErr != nil {
		return total, fmt.Errorf("workload %s on %s: %w", w.Name, path, firstErr)
	}
	if err := ctx.Err(); err != nil {
		return total, err
	}
	if total.Ops == 0 {
		return total, errors.New("workload " + w.Name + ": no request completed in the time given")
	}
	return total, nil
}

// alignedBuffer returns n bytes starting at a directAlign boundary.
func alignedBuffer(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+n : skip+n]
}

// fillRandom fills b with incompressible bytes from seed: the data a
// benchmark writes must not be cheaper to log than a real disk's.
func fillRandom(b []byte, seed uint64) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed+1)
	rand.NewChaCha8(key).Read(b)
}
