package fs

import (
	"math/bits"
	"sync/atomic"
)

// chunkShift is log2 of the blocks one chunk of a bitmap covers: 32768
// blocks (128 MiB of disk at 4 KiB) in 4 KiB of memory.
const chunkShift = 15

// chunkWordMask picks the word of a block within its chunk.
const chunkWordMask = 1<<chunkShift/64 - 1

// bitmapChunk is the bits of 1<<chunkShift consecutive blocks.
type bitmapChunk [1 << chunkShift / 64]atomic.Uint64

// bitmap is the set of blocks of a disk whose before-image a snapshot has
// saved. Bits are only ever set. Chunks are allocated on first use, so a
// large disk with few saved blocks costs little memory (8 bytes per 128 MiB
// of disk plus 4 KiB per chunk in use).
//
// Safe for concurrent use without a lock: get may race set, and sees the
// bit either way.
type bitmap struct {
	chunks []atomic.Pointer[bitmapChunk]
}

// newBitmap returns an empty bitmap of n blocks.
func newBitmap(n int64) bitmap {
	return bitmap{chunks: make([]atomic.Pointer[bitmapChunk], (n+1<<chunkShift-1)>>chunkShift)}
}

// get reports whether block b is set.
func (m *bitmap) get(b int64) bool {
	c := m.chunks[b>>chunkShift].Load()
	if c == nil {
		return false
	}
	return c[(b>>6)&chunkWordMask].Load()&(1<<uint(b&63)) != 0
}

// chunk returns chunk i, allocating it if need be.
func (m *bitmap) chunk(i int64) *bitmapChunk {
	if c := m.chunks[i].Load(); c != nil {
		return c
	}
	m.chunks[i].CompareAndSwap(nil, new(bitmapChunk))
	return m.chunks[i].Load()
}

// setRange sets blocks [lo, hi).
func (m *bitmap) setRange(lo, hi int64) {
	for b := lo; b < hi; {
		c := m.chunk(b >> chunkShift)
		// The bits of b's word from b up to hi.
		n := min(hi-b, 64-(b&63))
		mask := uint64(1)<<uint(n) - 1
		if n == 64 {
			mask = ^uint64(0)
		}
		c[(b>>6)&chunkWordMask].Or(mask << uint(b&63))
		b += n
	}
}

// next returns the first block in [b, limit) whose bit is set (set true)
// or clear (set false), or limit if there is none.
func (m *bitmap) next(b, limit int64, set bool) int64 {
	for b < limit {
		c := m.chunks[b>>chunkShift].Load()
		if c == nil {
			if !set {
				return b
			}
			b = (b>>chunkShift + 1) << chunkShift
			continue
		}
		w := c[(b>>6)&chunkWordMask].Load()
		if !set {
			w = ^w
		}
		if w >>= uint(b & 63); w != 0 {
			return min(b+int64(bits.TrailingZeros64(w)), limit)
		}
		b = b | 63 + 1
	}
	return limit
}
