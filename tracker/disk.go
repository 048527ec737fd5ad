package tracker

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// Disk records the changes of one disk image into its VM's active
// generation. It has the method set of fs.DiskRecorder.
//
// Written, Zeroed, Changed and Resized for disjoint blocks run concurrently;
// the caller serializes changes of the same block (fs holds a lock on every
// block a change touches, and the whole file for Resized), so that reading a
// block back from src shows the state that change left. None of them fails:
// a change that cannot be recorded marks the disk for resynchronization.
type Disk struct {
	l  *Log
	v  *vm
	id uint32

	// forward is set when the disk moved to another VM: it is recorded
	// there, under a new id, from then on. Set with v.rw held exclusive.
	forward atomic.Pointer[Disk]
	// flagged mirrors meta.resync for lock-free reads.
	flagged atomic.Bool
	// unlogged: the disk's changes are no longer logged until its resync
	// clears the flag, because writing its records failed (or the state
	// directory is full): the resync compares the whole disk anyway, and
	// the records would only fill the state directory.
	unlogged atomic.Bool
	// logBytes is the data held for this disk by the generations not yet
	// dropped: data blocks × block size.
	logBytes atomic.Int64
	// changedAt is when the mount last changed the disk's file (unix
	// nanoseconds, see touch); 0 if it has not since the log was opened.
	changedAt atomic.Int64

	mu struct {
		sync.Mutex
		gen     *generation // generation gd belongs to
		gd      *genDisk
		size    int64 // current size of the disk
		removed bool  // removed from the source (or moved): ignore changes
	}

	// Guarded by Log.mu.
	meta diskMeta
	refs int
	// watch: the file as the last CheckOutside found it.
	watch fileWatch
}

// identity is what Close records of a disk's file to notice at the next
// Open that it was changed outside the mount.
type identity struct {
	size  int64
	mtime int64 // unix nanoseconds
	inode uint64
}

// diskMeta is the persistent state of a disk, guarded by Log.mu.
type diskMeta struct {
	rel         string
	resync      bool
	reason      string
	since       time.Time
	removed     bool
	hasIdentity bool
	identity    identity
	unsaved     bool // the last change of it could not be stored
	// hot limits a resync to these byte ranges (its hot extents after a
	// crash of the host); nil: the whole disk.
	hot []Extent
}

func (l *Log) newDiskObject(v *vm, id uint32, rel string) *Disk {
	d := &Disk{l: l, v: v, id: id}
	d.meta.rel = rel
	return d
}

func (d *Disk) setMeta(r diskRecord) {
	d.meta = diskMeta{
		rel:         r.rel,
		resync:      r.flags&diskResync != 0,
		reason:      r.reason,
		since:       fromUnixNano(r.since),
		removed:     r.flags&diskRemoved != 0,
		hasIdentity: r.flags&diskIdentity != 0,
		identity:    identity{size: r.size, mtime: r.mtime, inode: r.inode},
	}
	d.mu.removed = d.meta.removed
}

func (d *Disk) recordLocked() diskRecord {
	m := &d.meta
	r := diskRecord{
		rel:    m.rel,
		size:   m.identity.size,
		mtime:  m.identity.mtime,
		inode:  m.identity.inode,
		reason: m.reason,
		since:  unixNano(m.since),
	}
	if m.resync {
		r.flags |= diskResync
	}
	if m.removed {
		r.flags |= diskRemoved
	}
	if m.hasIdentity {
		r.flags |= diskIdentity
	}
	return r
}

// BlockSize is the tracking granularity in bytes.
func (d *Disk) BlockSize() int { return int(d.l.bs) }

// LogBytes is how much block data the log holds for the disk in the
// generations not yet dropped.
func (d *Disk) LogBytes() int64 {
	if f := d.forward.Load(); f != nil {
		return f.LogBytes()
	}
	return d.logBytes.Load()
}

// Resync reports whether the disk is marked for resynchronization, and why.
func (d *Disk) Resync() (bool, string) {
	if f := d.forward.Load(); f != nil {
		return f.Resync()
	}
	d.l.mu.Lock()
	defer d.l.mu.Unlock()
	return d.meta.resync, d.meta.reason
}

// enter returns the disk that records changes now (following moves) with
// its VM's rw held shared, or false when the log is closed.
func (d *Disk) enter() (*Disk, bool) {
	for {
		d.v.rw.RLock()
		if d.l.closed.Load() {
			d.v.rw.RUnlock()
			return nil, false
		}
		f := d.forward.Load()
		if f == nil {
			return d, true
		}
		d.v.rw.RUnlock()
		d = f
	}
}

// Begin records, where it survives the death of the process, that a change
// of [off, off+n) of the disk's file is about to be made (n < 0: a change
// of its size), so that after a kill -9 the next Open records that range
// again from the file rather than resynchronizing every disk. Call it
// before changing the file, under the same block lock as the report that
// follows, and End with its token after the report. It may wait while
// tableSlots changes are in flight. The token is 0 when the log keeps no
// in-flight table (End accepts it).
//
// Begin also makes the extents of the change hot in the activity log
// (activity.go), which after a crash of the host bounds what is compared:
// it then waits for the activity log's commit when an extent was cold.
// The token's low 16 bits are the in-flight table's, the high ones the
// activity log's.
func (d *Disk) Begin(off, n int64) uint32 {
	l := d.l
	if l.closed.Load() {
		return 0
	}
	for f := d.forward.Load(); f != nil; f = f.forward.Load() {
		d = f
	}
	var token uint32
	if l.activity != nil {
		aoff, an := off, n
		if n < 0 {
			aoff, an = d.sizeChange(off)
		}
		token = l.beginActivity(d, aoff, an) << 16
	}
	if l.inflight != nil {
		token |= l.inflight.begin(d.id, off, n)
	}
	return token
}

// sizeChange returns the byte range that a change of the disk's size to
// size may leave different from the replica: what a shrink drops, or the
// end of a disk that grows (the growth reads as zeros on both sides; the
// extent only makes the resync set the size).
func (d *Disk) sizeChange(size int64) (int64, int64) {
	d.mu.Lock()
	cur := d.mu.size
	d.mu.Unlock()
	if size < cur {
		return size, cur - size
	}
	return cur, 1
}

// End frees the token of a Begin.
func (d *Disk) End(token uint32) {
	if t := token & 0xffff; t != 0 {
		d.l.inflight.end(t)
	}
	if t := token >> 16; t != 0 {
		d.l.activity.end(t)
	}
}

// Written records that data was written at off. Blocks only partly covered
// by data are read back whole from src.
func (d *Disk) Written(off int64, data []byte, src io.ReaderAt) {
	if off < 0 || len(data) == 0 {
		return
	}
	d, ok := d.enter()
	if !ok {
		return
	}
	defer d.v.rw.RUnlock()
	d.touch()
	o := d.l.getOp()
	defer d.l.ops.Put(o)
	bs := d.l.bs
	end := off + int64(len(data))
	b0, b1 := uint64(off/bs), uint64((end+bs-1)/bs)
	single := b1 == b0+1
	var readErr error
	head := off%bs != 0 || (single && end%bs != 0)
	tail := !single && end%bs != 0
	mid0, mid1 := b0, b1
	if head {
		readErr = readBlock(src, o.head, int64(b0)*bs)
		o.flat = append(o.flat, blockRef{b: b0, p: o.head, span: 0})
		mid0++
	}
	if tail {
		mid1--
	}
	for b := mid0; b < mid1; b++ {
		o.flat = append(o.flat, blockRef{b: b, p: data[int64(b)*bs-off:][:bs], span: 1})
	}
	if tail {
		if err := readBlock(src, o.tail, int64(b1-1)*bs); err != nil && readErr == nil {
			readErr = err
		}
		o.flat = append(o.flat, blockRef{b: b1 - 1, p: o.tail, span: 2})
	}
	o.grow, o.touch = end, end
	d.apply(o)
	if readErr != nil {
		d.l.markResync(d, fmt.Sprintf("%s: %v", reasonReadBack, readErr))
	}
}

// Zeroed records that [off, off+n) now reads as zeros. Blocks partly inside
// the range are read back from src.
func (d *Disk) Zeroed(off, n int64, src io.ReaderAt) {
	if off < 0 || n <= 0 {
		return
	}
	d, ok := d.enter()
	if !ok {
		return
	}
	defer d.v.rw.RUnlock()
	d.touch()
	o := d.l.getOp()
	defer d.l.ops.Put(o)
	bs := d.l.bs
	end := off + n
	zb0, zb1 := uint64((off+bs-1)/bs), uint64(end/bs)
	var readErr error
	read := func(b uint64, buf []byte, span int) {
		if err := readBlock(src, buf, int64(b)*bs); err != nil && readErr == nil {
			readErr = err
		}
		o.flat = append(o.flat, blockRef{b: b, p: buf, span: span})
	}
	if zb0 < zb1 {
		if off%bs != 0 {
			read(uint64(off/bs), o.head, 0)
		}
		o.zeroFrom, o.zeroTo = zb0, zb1
		if end%bs != 0 {
			read(zb1, o.tail, 2)
		}
	} else {
		// No whole block: one or two partial ones.
		read(uint64(off/bs), o.head, 0)
		if b := uint64((end - 1) / bs); b != uint64(off/bs) {
			read(b, o.tail, 2)
		}
	}
	o.touch = end
	d.apply(o)
	if readErr != nil {
		d.l.markResync(d, fmt.Sprintf("%s: %v", reasonReadBack, readErr))
	}
}

// Changed records that [off, off+n) changed without the data passing
// through the caller (copy_file_range): the blocks are read from src.
func (d *Disk) Changed(off, n int64, src io.ReaderAt) {
	if off < 0 || n <= 0 {
		return
	}
	d, ok := d.enter()
	if !ok {
		return
	}
	defer d.v.rw.RUnlock()
	d.touch()
	o := d.l.getOp()
	defer d.l.ops.Put(o)
	bs := d.l.bs
	end := off + n
	b0, b1 := uint64(off/bs), uint64((end+bs-1)/bs)
	step := uint64(max(1, changeChunk/bs))
	var readErr error
	for cb := b0; cb < b1; cb += step {
		ce := min(b1, cb+step)
		o.reset()
		buf := o.chunkBuf()[:int64(ce-cb)*bs]
		if err := readBlock(src, buf, int64(cb)*bs); err != nil && readErr == nil {
			readErr = err
		}
		for b := cb; b < ce; b++ {
			o.flat = append(o.flat, blockRef{b: b, p: buf[int64(b-cb)*bs:][:bs], span: 1})
		}
		o.grow, o.touch = end, end
		d.apply(o)
	}
	if readErr != nil {
		d.l.markResync(d, fmt.Sprintf("%s: %v", reasonReadBack, readErr))
	}
}

// Resized records that the disk is now size bytes long. On a shrink the
// blocks past the new end become a zero extent (so that growing again in
// the same generation reads zeros there) and the partial last block is
// read back from src.
func (d *Disk) Resized(size int64, src io.ReaderAt) {
	if size < 0 {
		return
	}
	d, ok := d.enter()
	if !ok {
		return
	}
	defer d.v.rw.RUnlock()
	d.touch()
	d.mu.Lock()
	cur := d.mu.size
	d.mu.Unlock()
	if size == cur {
		return
	}
	o := d.l.getOp()
	defer d.l.ops.Put(o)
	bs := d.l.bs
	var readErr error
	o.setSize, o.touch = size, size
	if size < cur {
		o.shrink = true
		if size%bs != 0 {
			b := uint64(size / bs)
			readErr = readBlock(src, o.head, int64(b)*bs)
			o.flat = append(o.flat, blockRef{b: b, p: o.head, span: 0})
		}
	}
	d.apply(o)
	if readErr != nil {
		d.l.markResync(d, fmt.Sprintf("%s: %v", reasonReadBack, readErr))
	}
}

// Sync returns once the records of every change reported before it are
// durable. When the log cannot make them durable, the disk is marked for
// resynchronization instead and Sync returns nil if that mark is durable:
// the replica will be repaired by resynchronization, so the workload's
// fsync need not fail (invariant 2). It returns an error only when even the
// mark could not be stored.
func (d *Disk) Sync() error {
	d, ok := d.enter()
	if !ok {
		return nil // Close synced everything
	}
	v := d.v
	v.mu.Lock()
	gens := append(make([]*generation, 0, 2), v.mu.unsynced...)
	v.mu.Unlock()
	v.rw.RUnlock()
	l := d.l
	for _, g := range gens {
		if err := g.seg.syncData(); err != nil {
			// After a failed fsync the kernel may have dropped dirty
			// pages of every writer of the segment: flag them all.
			reason := fmt.Sprintf("%s: %v", reasonSync, err)
			l.markGenerationResync(g, reason)
			l.markResync(d, reason)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if d.meta.unsaved && !l.closed.Load() {
		if err := l.persistDiskLocked(d); err != nil {
			return fmt.Errorf("tracker: storing the state of disk %s: %w", d.meta.rel, err)
		}
	}
	return nil
}

// Release tells the log that the caller no longer uses this handle. The
// disk stays tracked.
func (d *Disk) Release() {
	d.l.mu.Lock()
	if d.refs > 0 {
		d.refs--
	}
	d.l.mu.Unlock()
}

// genDiskLocked returns the disk's index in generation g, starting one if
// the disk has none there yet. d.mu must be held.
func (d *Disk) genDiskLocked(g *generation) *genDisk {
	if d.mu.gen == g {
		return d.mu.gd
	}
	g.mu.Lock()
	gd := g.mu.disks[d.id]
	if gd == nil {
		gd = newGenDisk(d.id, d.mu.size)
		g.mu.disks[d.id] = gd
	}
	g.mu.Unlock()
	d.mu.gen, d.mu.gd = g, gd
	return gd
}

// apply records the change described by o in the active generation: it
// updates the index and reserves segment space under d.mu, then writes the
// records with d.mu released. d.v.rw must be held shared.
func (d *Disk) apply(o *op) {
	l := d.l
	bs := l.bs
	g := d.v.active
	seg := g.seg
	d.mu.Lock()
	if d.mu.removed {
		d.mu.Unlock()
		return
	}
	gd := d.genDiskLocked(g)
	oldSize := d.mu.size
	size := oldSize
	if o.grow > size {
		size = o.grow
	}
	if o.setSize >= 0 {
		size = o.setSize
	}
	if o.shrink {
		o.zeroFrom = uint64((size + bs - 1) / bs)
		o.zeroTo = uint64((gd.maxSize + bs - 1) / bs)
	}
	maxSize := max(gd.maxSize, size, o.touch)
	if d.unlogged.Load() || l.full.Load() {
		// Not logged: only the size is kept, which the records of the
		// changes after the resync carry.
		d.mu.size = size
		d.mu.Unlock()
		if !d.unlogged.Load() {
			l.markLost(d, reasonFull)
		}
		return
	}
	hdr := recHeader{disk: d.id, size: size, maxSize: maxSize}

	added := 0
	for i := 0; i < len(o.flat); {
		b := o.flat[i].b
		if slot, ok := gd.blocks[b]; ok {
			// Already in this generation: overwrite in place, one write
			// for a run of contiguous slots.
			n := 1
			for i+n < len(o.flat) && o.flat[i+n].b == b+uint64(n) {
				if s, ok := gd.blocks[b+uint64(n)]; !ok || s != slot+int64(n)*bs {
					break
				}
				n++
			}
			o.runs = append(o.runs, run{off: slot, hdr: -1, first: i, n: n})
			i += n
			continue
		}
		n := 1
		for i+n < len(o.flat) && o.flat[i+n].b == b+uint64(n) {
			if _, ok := gd.blocks[b+uint64(n)]; ok {
				break
			}
			n++
		}
		recOff := seg.reserve(recHeaderSize + int64(n)*bs)
		for k := 0; k < n; k++ {
			gd.blocks[b+uint64(k)] = recOff + recHeaderSize + int64(k)*bs
		}
		gd.zeros.remove(b, b+uint64(n))
		added += n
		h := hdr
		h.kind, h.block, h.count = KindData, b, uint64(n)
		o.runs = append(o.runs, run{off: recOff, hdr: o.addHeader(&h), first: i, n: n})
		i += n
	}
	deleted := 0
	if o.zeroTo > o.zeroFrom {
		deleted = gd.zero(o.zeroFrom, o.zeroTo)
		h := hdr
		h.kind, h.block, h.count = KindZero, o.zeroFrom, o.zeroTo-o.zeroFrom
		o.runs = append(o.runs, run{off: seg.reserve(recHeaderSize), hdr: o.addHeader(&h)})
	}
	if len(o.hdrs) == 0 && size != oldSize {
		h := hdr
		h.kind = KindSize
		o.runs = append(o.runs, run{off: seg.reserve(recHeaderSize), hdr: o.addHeader(&h)})
	}
	gd.size, gd.maxSize, d.mu.size = size, maxSize, size
	d.mu.Unlock()

	if added != deleted {
		d.logBytes.Add(int64(added-deleted) * bs)
	}
	err := o.write(seg.f, bs)
	seg.done.Add(1)
	if err != nil {
		g.broken.Store(true)
		l.checkSpace(err)
		l.markLost(d, fmt.Sprintf("%s: %v", reasonWrite, err))
	}
}

// readBlock fills p from src at off; bytes past the end of src read as
// zeros.
func readBlock(src io.ReaderAt, p []byte, off int64) error {
	n, err := src.ReadAt(p, off)
	if n < len(p) {
		clear(p[n:])
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
