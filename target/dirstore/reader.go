package dirstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
	"sync"

	"github.com/drfs-project/drfs/target"
)

// Open returns a reader of disk of vm as it was at point gen. The newest
// point reads the replica; an older point P reads, for each byte, the undo
// data of the oldest generation after P that changed it, else the replica.
// Opening costs the size of those undo files' indexes, not of the disk.
func (s *Store) Open(ctx context.Context, vm string, gen uint64, disk string) (target.DiskReader, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	if err := checkDisk(disk); err != nil {
		return nil, err
	}
	v, err := s.rlock(vm)
	if err != nil {
		return nil, err
	}
	defer s.runlock(v)
	if len(v.points) == 0 {
		return nil, notFoundVM(vm)
	}
	p := v.find(gen)
	if p == nil {
		return nil, fmt.Errorf("dirstore: VM %s point %d: %w", vm, gen, target.ErrNotFound)
	}
	size, ok := diskSizes(p)[disk]
	if !ok {
		return nil, fmt.Errorf("dirstore: VM %s point %d disk %s: %w", vm, gen, disk, target.ErrNotFound)
	}
	rep, err := s.root.Open(replicaPath(vm, disk))
	if err != nil {
		return nil, fmt.Errorf("dirstore: VM %s disk %s: replica: %w", vm, disk, err)
	}
	r := &diskReader{s: s, v: v, disk: disk, gen: gen, size: size, rep: rep, upTo: gen}
	if err := r.refreshLocked(); err != nil {
		r.closeFiles()
		return nil, err
	}
	// The chain must agree with the manifest on the size at P.
	chain := int64(-1)
	if len(r.layers) > 0 {
		if u := r.layers[0]; u.flags&undoAbsent == 0 {
			chain = u.prevSize
		}
	} else if fi, err := rep.Stat(); err == nil {
		chain = fi.Size()
	}
	if chain != size {
		r.closeFiles()
		return nil, brokenError{fmt.Errorf("dirstore: VM %s point %d disk %s: size %d, but the replica and undo data give %d",
			vm, gen, disk, size, chain)}
	}
	v.pinMu.Lock()
	v.pins[gen]++
	v.pinMu.Unlock()
	if s.readOnly {
		r.pin = s.pin(vm, gen)
	}
	return r, nil
}

// diskReader reads one disk at one point. ReadAt and Extents may be called
// concurrently; they take turns.
type diskReader struct {
	s    *Store
	v    *vmState
	disk string
	gen  uint64
	size int64
	rep  *os.File
	pin  *os.File // a read-only Store's hold on the point (Store.pin); may be nil

	mu     sync.Mutex // guards the fields below
	closed bool
	layers []*undoFile // undo data of the generations after gen that changed the disk, oldest first
	upTo   uint64      // the newest generation layers accounts for
	cache  struct {    // the last undo payload read
		u    *undoFile
		i    int
		data []byte
	}
}

// refreshLocked adds the undo files of generations committed since the
// reader last looked. The caller holds r.v.mu (shared or not) and, once
// the reader is shared, r.mu.
func (r *diskReader) refreshLocked() error {
	for _, p := range r.v.points {
		if p.Generation <= r.upTo {
			continue
		}
		f, err := r.s.root.Open(undoPath(r.v.name, p.Generation, r.disk))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("dirstore: VM %s disk %s: %w", r.v.name, r.disk, err)
		}
		u, err := loadUndo(f)
		if err != nil {
			f.Close()
			return err
		}
		r.layers = append(r.layers, u)
	}
	if n := r.v.newest(); n != nil && n.Generation > r.upTo {
		r.upTo = n.Generation
	}
	return nil
}

// lock takes the VM's lock (shared) and the reader's, bringing the layers
// up to date.
func (r *diskReader) lock() error {
	if r.s.readOnly {
		if err := r.s.rlockShared(r.v); err != nil {
			return err
		}
	} else {
		r.v.mu.RLock()
	}
	r.mu.Lock()
	var err error
	switch {
	case r.closed:
		err = fmt.Errorf("dirstore: %s/%s: %w", r.v.name, r.disk, os.ErrClosed)
	case !r.v.loaded.Load():
		err = fmt.Errorf("dirstore: VM %s is being recovered after a failed commit; retry", r.v.name)
	case r.v.find(r.gen) == nil:
		// Only a reader without a pin file: the point expired under it.
		err = fmt.Errorf("dirstore: VM %s point %d expired while it was read: %w", r.v.name, r.gen, target.ErrNotFound)
	default:
		err = r.refreshLocked()
	}
	if err != nil {
		r.unlock()
	}
	return err
}

func (r *diskReader) unlock() {
	r.mu.Unlock()
	r.s.runlock(r.v)
}

func (r *diskReader) Size() int64 { return r.size }

// piece is a part of the disk and where its bytes are: in the replica (e
// nil) or in an undo entry.
type piece struct {
	off, end int64
	u        *undoFile
	e        *undoEntry
	ei       int
}

// walk calls fn for the pieces of [off, end) in order, resolving layers
// from li on.
func (r *diskReader) walk(off, end int64, li int, fn func(piece) error) error {
	if off >= end {
		return nil
	}
	if li == len(r.layers) {
		return fn(piece{off: off, end: end})
	}
	u := r.layers[li]
	for i := u.find(off); off < end; i++ {
		if i >= len(u.entries) || u.entries[i].off >= end {
			return r.walk(off, end, li+1, fn)
		}
		e := &u.entries[i]
		if e.off > off {
			if err := r.walk(off, e.off, li+1, fn); err != nil {
				return err
			}
			off = e.off
		}
		pe := min(end, e.off+e.len)
		if err := fn(piece{off: off, end: pe, u: u, e: e, ei: i}); err != nil {
			return err
		}
		off = pe
	}
	return nil
}

func (r *diskReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("dirstore: ReadAt at negative offset %d", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	if err := r.lock(); err != nil {
		return 0, err
	}
	defer r.unlock()
	err := r.walk(off, off+int64(n), 0, func(pc piece) error {
		dst := p[pc.off-off : pc.end-off]
		switch {
		case pc.e == nil:
			return readFull(r.rep, dst, pc.off)
		case pc.e.zero:
			clear(dst)
			return nil
		}
		data, err := r.payload(pc)
		if err != nil {
			return err
		}
		copy(dst, data[pc.off-pc.e.off:])
		return nil
	})
	if err != nil {
		return 0, err
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// payload returns the verified payload of a piece's undo entry.
func (r *diskReader) payload(pc piece) ([]byte, error) {
	c := &r.cache
	if c.u == pc.u && c.i == pc.ei && c.data != nil {
		return c.data, nil
	}
	if cap(c.data) < int(pc.e.len) {
		c.data = make([]byte, maxUndoData)
	}
	data, err := pc.u.payload(pc.e, c.data)
	if err != nil {
		c.data = nil
		return nil, err
	}
	c.u, c.i, c.data = pc.u, pc.ei, data
	return data, nil
}

func (r *diskReader) Extents() ([]target.Extent, error) {
	if err := r.lock(); err != nil {
		return nil, err
	}
	defer r.unlock()
	fi, err := r.rep.Stat()
	if err != nil {
		return nil, err
	}
	repExts, err := dataExtents(r.rep, 0, fi.Size())
	if err != nil {
		return nil, err
	}
	var out []target.Extent
	add := func(off, end int64) {
		if off >= end {
			return
		}
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == off {
			out[k].Len += end - off
			return
		}
		out = append(out, target.Extent{Off: off, Len: end - off})
	}
	err = r.walk(0, r.size, 0, func(pc piece) error {
		switch {
		case pc.e == nil:
			i := sort.Search(len(repExts), func(i int) bool { return repExts[i].off+repExts[i].len > pc.off })
			for ; i < len(repExts) && repExts[i].off < pc.end; i++ {
				add(max(pc.off, repExts[i].off), min(pc.end, repExts[i].off+repExts[i].len))
			}
		case !pc.e.zero:
			add(pc.off, pc.end)
		}
		return nil
	})
	return out, err
}

var _ target.Overlayer = (*diskReader)(nil)

// Overlay reports the ranges where the point differs from the replica: the
// undo data of the generations after it (see target.Overlayer). The newest
// point reports none.
func (r *diskReader) Overlay(fn func(off, n int64, data []byte) error) error {
	if err := r.lock(); err != nil {
		return err
	}
	defer r.unlock()
	return r.walk(0, r.size, 0, func(pc piece) error {
		switch {
		case pc.e == nil:
			return nil
		case pc.e.zero:
			return fn(pc.off, pc.end-pc.off, nil)
		}
		data, err := r.payload(pc)
		if err != nil {
			return err
		}
		return fn(pc.off, pc.end-pc.off, data[pc.off-pc.e.off:pc.end-pc.e.off])
	})
}

// Close releases the reader's files and its hold on the point.
func (r *diskReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.closeFiles()
	r.v.pinMu.Lock()
	if r.v.pins[r.gen]--; r.v.pins[r.gen] <= 0 {
		delete(r.v.pins, r.gen)
	}
	r.v.pinMu.Unlock()
	return nil
}

func (r *diskReader) closeFiles() {
	r.rep.Close()
	if r.pin != nil {
		r.pin.Close()
	}
	for _, u := range r.layers {
		u.f.Close()
	}
	r.layers = nil
}
