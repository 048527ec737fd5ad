package fs

import (
	"math"
	"math/bits"
	"sync"
	"unsafe"
)

// lockStripes is the number of block mutexes of a disk. Block b is guarded
// by stripe b mod lockStripes, so a set of stripes fits in one uint64.
const lockStripes = 64

// blockLock is the lock of one tracked disk that the DiskRecorder contract
// asks for: a change holds an exclusive lock on every block it touches from
// before it changes the backing file until its recorder call returns, so
// that the blocks it reads back show exactly the state it left.
//
// Block changes take resize shared and then the stripes of their blocks in
// ascending stripe order (one global order, so two changes cannot deadlock);
// changes to disjoint blocks of different stripes run in parallel. A change
// that may move the end of the file takes resize exclusively and so has the
// whole file. Neither path allocates.
//
// The zero value is not usable: use newBlockLock.
type blockLock struct {
	// resize is held shared by block changes and exclusively by changes of
	// the file size (truncate, fallocate that may grow or shift the file).
	resize sync.RWMutex
	// shift is log2 of the block size.
	shift uint
	// stripes[i] guards the blocks b with b mod lockStripes == i.
	stripes [lockStripes]paddedMutex
}

// paddedMutex keeps each stripe on its own cache line so that writers of
// different stripes do not slow each other down.
type paddedMutex struct {
	sync.Mutex
	_ [64 - unsafe.Sizeof(sync.Mutex{})]byte
}

// newBlockLock returns the lock for blocks of blockSize bytes, which must be
// a power of two.
func newBlockLock(blockSize int) *blockLock {
	if blockSize <= 0 || blockSize&(blockSize-1) != 0 {
		panic("fs: DiskRecorder.BlockSize is not a power of two")
	}
	return &blockLock{shift: uint(bits.TrailingZeros(uint(blockSize)))}
}

// stripeMask returns the set of stripes that guard the blocks of
// [off, off+n). An empty range needs no stripe.
func (l *blockLock) stripeMask(off, n int64) uint64 {
	if n <= 0 || off < 0 {
		return 0
	}
	if n > math.MaxInt64-off {
		n = math.MaxInt64 - off
	}
	first := off >> l.shift
	last := (off + n - 1) >> l.shift
	if last-first >= lockStripes-1 {
		return math.MaxUint64
	}
	run := uint64(1)<<uint(last-first+1) - 1
	return bits.RotateLeft64(run, int(first%lockStripes))
}

// lockRange locks the blocks of [off, off+n) for a change that keeps the
// file size (or only extends it by writing). It returns the stripes to pass
// to unlockRange.
func (l *blockLock) lockRange(off, n int64) uint64 {
	l.resize.RLock()
	held := l.stripeMask(off, n)
	for m := held; m != 0; m &= m - 1 {
		l.stripes[bits.TrailingZeros64(m)].Lock()
	}
	return held
}

// unlockRange releases what lockRange took.
func (l *blockLock) unlockRange(held uint64) {
	for m := held; m != 0; m &= m - 1 {
		l.stripes[bits.TrailingZeros64(m)].Unlock()
	}
	l.resize.RUnlock()
}

// lockFile locks every block of the file, for a change of its size.
func (l *blockLock) lockFile() { l.resize.Lock() }

// unlockFile releases what lockFile took.
func (l *blockLock) unlockFile() { l.resize.Unlock() }
