package tracker

import (
	"slices"

	"github.com/google/btree"
)

// extent is the block interval [start, end).
type extent struct{ start, end uint64 }

func extentLess(a, b extent) bool { return a.start < b.start }

// extents is a set of blocks kept as sorted, disjoint, non-adjacent
// intervals: the zero extents of a disk in one generation. Not safe for
// concurrent use.
type extents struct {
	t      *btree.BTreeG[extent] // nil while empty
	blocks uint64                // total blocks covered
	tmp    []extent
}

// overlapping returns the extents that intersect [a, b), ascending. The
// slice is reused by the next call.
func (e *extents) overlapping(a, b uint64) []extent {
	e.tmp = e.tmp[:0]
	if e.t == nil || e.t.Len() == 0 || a >= b {
		return e.tmp
	}
	e.t.DescendLessOrEqual(extent{start: a}, func(x extent) bool {
		if x.end > a {
			e.tmp = append(e.tmp, x)
		}
		return false
	})
	e.t.AscendRange(extent{start: a + 1}, extent{start: b}, func(x extent) bool {
		e.tmp = append(e.tmp, x)
		return true
	})
	return e.tmp
}

// remove takes [a, b) out of the set.
func (e *extents) remove(a, b uint64) {
	for _, x := range e.overlapping(a, b) {
		e.t.Delete(x)
		e.blocks -= x.end - x.start
		if x.start < a {
			e.insert(extent{x.start, a})
		}
		if x.end > b {
			e.insert(extent{b, x.end})
		}
	}
}

func (e *extents) insert(x extent) {
	if e.t == nil {
		e.t = btree.NewG(8, extentLess)
	}
	e.t.ReplaceOrInsert(x)
	e.blocks += x.end - x.start
}

// add puts [a, b) into the set, merging it with its neighbours.
func (e *extents) add(a, b uint64) {
	if a >= b {
		return
	}
	e.remove(a, b)
	if e.t != nil && a > 0 {
		var left extent
		found := false
		e.t.DescendLessOrEqual(extent{start: a - 1}, func(x extent) bool {
			left, found = x, x.end == a
			return false
		})
		if found {
			e.t.Delete(left)
			e.blocks -= left.end - left.start
			a = left.start
		}
	}
	if e.t != nil {
		if right, ok := e.t.Get(extent{start: b}); ok {
			e.t.Delete(right)
			e.blocks -= right.end - right.start
			b = right.end
		}
	}
	e.insert(extent{a, b})
}

// ascend calls fn for each extent in order.
func (e *extents) ascend(fn func(extent) bool) {
	if e.t != nil {
		e.t.Ascend(fn)
	}
}

// genDisk is the index of one disk in one generation: which blocks hold
// data and where in the segment, which read as zeros, and the disk's size.
// Data blocks and zero extents never overlap: a data write takes its blocks
// out of the zero extents, a zero range deletes the data blocks in it.
//
// While its generation is active it is guarded by the Disk's mu; once the
// generation is swapped out it never changes again.
type genDisk struct {
	id      uint32
	blocks  map[uint64]int64 // block → segment offset of its data
	zeros   extents
	size    int64 // size after the last change
	maxSize int64 // largest size in this generation, including its start
	removed bool
}

func newGenDisk(id uint32, size int64) *genDisk {
	return &genDisk{id: id, blocks: make(map[uint64]int64), size: size, maxSize: size}
}

// deleteData deletes the data blocks in [a, b) and returns how many there
// were.
func (g *genDisk) deleteData(a, b uint64) int {
	n := 0
	if a >= b || len(g.blocks) == 0 {
		return 0
	}
	if uint64(len(g.blocks)) < b-a {
		for k := range g.blocks {
			if k >= a && k < b {
				delete(g.blocks, k)
				n++
			}
		}
		return n
	}
	for k := a; k < b; k++ {
		if _, ok := g.blocks[k]; ok {
			delete(g.blocks, k)
			n++
		}
	}
	return n
}

// zero makes [a, b) a zero extent and returns how many data blocks it
// deleted.
func (g *genDisk) zero(a, b uint64) int {
	if a >= b {
		return 0
	}
	n := g.deleteData(a, b)
	g.zeros.add(a, b)
	return n
}

// markRemoved drops everything the generation held for the disk and
// returns how many data blocks that was.
func (g *genDisk) markRemoved() int {
	n := len(g.blocks)
	clear(g.blocks)
	g.zeros = extents{}
	g.removed = true
	return n
}

// emit calls fn with the disk's index entries in block order: runs of data
// blocks with contiguous slots, zero extents, then the size (or removed)
// entry with block sizeBlock. Blocks at or past the final size are left out:
// replay truncates them away. It returns the data and zero blocks emitted
// and the data blocks left out.
func (g *genDisk) emit(bs int64, fn func(block uint64, e indexEntry) error) (data, zeros uint64, clipped int, err error) {
	if g.removed {
		return 0, 0, 0, fn(sizeBlock, indexEntry{kind: KindRemoved})
	}
	limit := uint64((g.size + bs - 1) / bs)
	keys := make([]uint64, 0, len(g.blocks))
	for b := range g.blocks {
		if b < limit {
			keys = append(keys, b)
		} else {
			clipped++
		}
	}
	slices.Sort(keys)
	var zs []extent
	g.zeros.ascend(func(x extent) bool {
		if x.start >= limit {
			return false
		}
		zs = append(zs, extent{x.start, min(x.end, limit)})
		return true
	})
	i, j := 0, 0
	for i < len(keys) || j < len(zs) {
		if i < len(keys) && (j == len(zs) || keys[i] < zs[j].start) {
			start, slot := keys[i], g.blocks[keys[i]]
			n := uint64(1)
			for i+int(n) < len(keys) && keys[i+int(n)] == start+n && g.blocks[start+n] == slot+int64(n)*bs {
				n++
			}
			if err := fn(start, indexEntry{kind: KindData, count: n, arg: slot}); err != nil {
				return 0, 0, 0, err
			}
			data += n
			i += int(n)
			continue
		}
		z := zs[j]
		if err := fn(z.start, indexEntry{kind: KindZero, count: z.end - z.start}); err != nil {
			return 0, 0, 0, err
		}
		zeros += z.end - z.start
		j++
	}
	return data, zeros, clipped, fn(sizeBlock, indexEntry{kind: KindSize, arg: g.size})
}

// replay applies one segment record to the index: crash recovery runs the
// segment through it in order and so rebuilds what the live path built.
// It returns the change in the number of data blocks.
func (g *genDisk) replay(h recHeader, dataOff int64, bs int64) int {
	delta := 0
	switch h.kind {
	case KindData:
		g.zeros.remove(h.block, h.block+h.count)
		for i := uint64(0); i < h.count; i++ {
			if _, ok := g.blocks[h.block+i]; !ok {
				delta++
			}
			g.blocks[h.block+i] = dataOff + int64(i)*bs
		}
	case KindZero:
		delta -= g.zero(h.block, h.block+h.count)
	case KindRemoved:
		delta -= g.markRemoved()
	}
	g.size = h.size
	g.maxSize = max(g.maxSize, h.maxSize)
	return delta
}
