package tracker

import (
	"github.com/cockroachdb/pebble/v2/vfs"
)

const (
	// changeChunk bounds the memory a Changed call reads at a time.
	changeChunk = 1 << 20
	// gatherSize is the scratch buffer that small pieces of a record
	// (header, read-back blocks, small writes) are copied into so that a
	// record takes one write; larger pieces are written from the caller's
	// buffer directly.
	gatherSize = 256 << 10
)

// blockRef is one block of a change and where its bytes are. span tells
// apart the buffers a change's blocks come from (read-back head, the
// caller's data, read-back tail): consecutive blocks of one span are
// consecutive in memory.
type blockRef struct {
	b    uint64
	p    []byte
	span int
}

// run is one write of a change: a new record (header, then blocks), or
// blocks overwritten in place in their slots.
type run struct {
	off   int64 // segment offset to write at
	hdr   int   // offset of the record header in op.hdrs, or -1 (in place)
	first int   // first block, an index into op.flat
	n     int   // number of blocks
}

// op is the scratch state of one change, reused through Log.ops so that
// the write path allocates nothing per block.
type op struct {
	flat    []blockRef
	runs    []run
	hdrs    []byte
	head    []byte // one block
	tail    []byte // one block
	scratch []byte
	chunk   []byte // Changed reads, allocated on first use

	// The change. zeroFrom/zeroTo: blocks that become a zero extent.
	// shrink: the zero extent is computed under the disk's lock, from the
	// new size to the largest size of the generation. grow: the disk is at
	// least this long after; setSize: exactly this long (-1: neither).
	// touch: the highest offset the change reached.
	zeroFrom, zeroTo uint64
	shrink           bool
	grow, setSize    int64
	touch            int64
}

func newOp(bs int64) *op {
	o := &op{
		head:    make([]byte, bs),
		tail:    make([]byte, bs),
		scratch: make([]byte, 0, max(gatherSize, 2*(bs+recHeaderSize))),
	}
	o.reset()
	return o
}

func (l *Log) getOp() *op {
	o := l.ops.Get().(*op)
	o.reset()
	return o
}

func (o *op) reset() {
	o.flat = o.flat[:0]
	o.runs = o.runs[:0]
	o.hdrs = o.hdrs[:0]
	o.zeroFrom, o.zeroTo, o.shrink = 0, 0, false
	o.grow, o.setSize, o.touch = -1, -1, 0
}

func (o *op) chunkBuf() []byte {
	if o.chunk == nil {
		o.chunk = make([]byte, max(changeChunk, int64(len(o.head))))
	}
	return o.chunk
}

func (o *op) addHeader(h *recHeader) int {
	at := len(o.hdrs)
	o.hdrs = append(o.hdrs, make([]byte, recHeaderSize)...)
	h.encode(o.hdrs[at:])
	return at
}

// write performs the runs planned by Disk.apply.
func (o *op) write(f vfs.File, bs int64) error {
	for _, r := range o.runs {
		w := gather{f: f, off: r.off, buf: o.scratch[:0]}
		if r.hdr >= 0 {
			w.add(o.hdrs[r.hdr : r.hdr+recHeaderSize])
		}
		end := r.first + r.n
		for i := r.first; i < end; {
			j := i + 1
			for j < end && o.flat[j].span == o.flat[i].span {
				j++
			}
			w.add(o.flat[i].p[:int64(j-i)*bs])
			i = j
		}
		if err := w.flush(); err != nil {
			return err
		}
	}
	return nil
}

// gather writes consecutive pieces at consecutive offsets with as few
// writes as it can without copying large pieces.
type gather struct {
	f   vfs.File
	off int64 // file offset of buf[0]
	buf []byte
	err error
}

func (w *gather) add(p []byte) {
	if w.err != nil {
		return
	}
	if len(p) > cap(w.buf)/2 {
		if len(w.buf)+len(p) <= cap(w.buf) {
			w.buf = append(w.buf, p...)
			return
		}
		if w.flush() != nil {
			return
		}
		_, w.err = w.f.WriteAt(p, w.off)
		w.off += int64(len(p))
		return
	}
	if len(w.buf)+len(p) > cap(w.buf) && w.flush() != nil {
		return
	}
	w.buf = append(w.buf, p...)
}

func (w *gather) flush() error {
	if w.err == nil && len(w.buf) > 0 {
		_, w.err = w.f.WriteAt(w.buf, w.off)
		w.off += int64(len(w.buf))
		w.buf = w.buf[:0]
	}
	return w.err
}
