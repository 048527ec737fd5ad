package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Record is one entry of a frozen generation, as ReadGeneration hands it
// out: per disk (in disk order) the data and zero records in block order,
// then the disk's final size. Replaying a generation onto the state of
// the previous cut means: write the data, zero the zero extents, then
// truncate (or extend) each disk to its size; a KindRemoved record means
// the disk was removed from the source.
type Record struct {
	Disk   string // the disk's name inside its VM
	Kind   Kind
	Block  uint64 // first block (data, zero)
	Blocks uint64 // number of blocks (data, zero)
	Data   []byte // Blocks whole blocks (data); valid only during the callback
	Size   int64  // bytes (size)
}

// VMs returns the names of the VMs the log knows, sorted.
func (l *Log) VMs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make([]string, 0, len(l.mu.vms))
	for n := range l.mu.vms {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (l *Log) lookupVM(name string) (*vm, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.mu.vms[name]; v != nil {
		return v, nil
	}
	return nil, &openError{ErrUnknownVM, fmt.Sprintf("tracker: no VM %q in the change log: see the list of VMs", name)}
}

// Frozen returns the frozen generations of a VM, ascending: those Rotate
// returned and Drop has not dropped.
func (l *Log) Frozen(vmName string) []uint64 {
	v, err := l.lookupVM(vmName)
	if err != nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	var gens []uint64
	for _, gi := range v.mu.gens {
		if gi.frozen {
			gens = append(gens, gi.n)
		}
	}
	return gens
}

// Rotate freezes the active generation of a VM and starts the next one,
// atomically across the VM's disks: every change lands wholly in the
// generation it returns or in the next. The returned generation is durable
// (segment synced, index stored) when Rotate returns nil.
func (l *Log) Rotate(vmName string) (uint64, error) {
	if l.opts.ReadOnly {
		return 0, ErrReadOnly
	}
	v, err := l.lookupVM(vmName)
	if err != nil {
		return 0, err
	}
	v.rotMu.Lock()
	defer v.rotMu.Unlock()
	if l.closed.Load() {
		return 0, ErrClosed
	}
	// Retry generations whose freeze failed before.
	v.mu.Lock()
	var pending []*genInfo
	for _, gi := range v.mu.gens {
		if !gi.frozen && gi.live != v.active {
			pending = append(pending, gi)
		}
	}
	cur := v.mu.gens[len(v.mu.gens)-1]
	v.mu.Unlock()
	for _, gi := range pending {
		if err := l.freeze(v, gi); err != nil {
			return 0, err
		}
	}

	l.restoreReserve()
	next, err := l.newGeneration(v, cur.n+1)
	if err != nil {
		return 0, fmt.Errorf("tracker: rotating %s: %w", vmName, err)
	}
	v.mu.Lock()
	v.mu.gens = append(v.mu.gens, next)
	v.mu.unsynced = append(v.mu.unsynced, next.live)
	v.mu.Unlock()

	v.rw.Lock()
	v.active = next.live
	v.rw.Unlock()

	if err := l.freeze(v, cur); err != nil {
		return cur.n, fmt.Errorf("tracker: rotating %s: %w", vmName, err)
	}
	return cur.n, nil
}

// freeze makes a generation that no longer receives changes durable and
// immutable: it syncs the segment, then stores the index and the frozen
// state in one synced batch. On failure the generation stays pending (and
// its disks are marked for resynchronization); Rotate retries it.
func (l *Log) freeze(v *vm, gi *genInfo) error {
	g := gi.live
	if g.seg.f != nil && !g.broken.Load() {
		if err := g.seg.syncData(); err != nil {
			reason := fmt.Sprintf("%s %d: %v", reasonFreeze, g.n, err)
			l.markGenerationResync(g, reason)
			return fmt.Errorf("syncing generation %d: %w", g.n, err)
		}
	}
	g.mu.Lock()
	ids := make([]uint32, 0, len(g.mu.disks))
	for id := range g.mu.disks {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	slices.Sort(ids)

	b := l.db.NewBatch()
	defer b.Close()
	key := make([]byte, 0, indexKeySize)
	val := make([]byte, 0, indexValueSize)
	stats := make([]genDiskStat, 0, len(ids))
	clipped := make([]int, len(ids))
	for i, id := range ids {
		g.mu.Lock()
		gd := g.mu.disks[id]
		g.mu.Unlock()
		data, zeros, clip, err := gd.emit(l.bs, func(block uint64, e indexEntry) error {
			key = appendIndexKey(key[:0], v.id, g.n, id, block)
			val = appendIndexValue(val[:0], e)
			return b.Set(key, val, nil)
		})
		if err != nil {
			return err
		}
		clipped[i] = clip
		stats = append(stats, genDiskStat{disk: id, dataBlocks: data, zeroBlocks: zeros, size: gd.size, removed: gd.removed})
		if err := b.Set(sizeKey(v.id, id), binary.AppendVarint(nil, gd.size), nil); err != nil {
			return err
		}
	}
	rec := genRecord{state: genFrozen, created: unixNano(g.created), disks: stats}
	if err := b.Set(genKey(v.id, g.n), rec.encode(), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); l.checkSpace(err) != nil {
		reason := fmt.Sprintf("%s %d: %v", reasonFreeze, g.n, err)
		l.markGenerationResync(g, reason)
		return fmt.Errorf("storing the index of generation %d: %w", g.n, err)
	}
	for i, id := range ids {
		if clipped[i] > 0 {
			l.mu.Lock()
			d := l.mu.disks[id]
			l.mu.Unlock()
			if d != nil {
				d.logBytes.Add(-int64(clipped[i]) * l.bs)
			}
		}
	}
	v.mu.Lock()
	gi.frozen, gi.stats, gi.live = true, stats, nil
	v.mu.unsynced = slices.DeleteFunc(v.mu.unsynced, func(x *generation) bool { return x == g })
	v.mu.Unlock()
	g.seg.close()
	return nil
}

// readChunk is the most data one Record carries.
func (l *Log) readChunk() int64 { return max(1<<20, l.bs) }

// ReadGeneration calls fn with the records of a frozen generation: disk by
// disk, each disk's data and zero records in block order, then its size (or
// its removal). Record.Data is valid only during the call. An error from
// fn stops the read and is returned.
func (l *Log) ReadGeneration(vmName string, gen uint64, fn func(Record) error) error {
	v, err := l.lookupVM(vmName)
	if err != nil {
		return err
	}
	v.dropMu.RLock()
	defer v.dropMu.RUnlock()
	if l.closed.Load() {
		return ErrClosed
	}
	if !l.isFrozen(v, gen) {
		return &openError{ErrGeneration, fmt.Sprintf("tracker: VM %s has no frozen generation %d", vmName, gen)}
	}
	names := make(map[uint32]string)
	l.mu.Lock()
	for id, d := range l.mu.disks {
		if d.v == v {
			names[id] = l.diskName(d.meta.rel)
		}
	}
	l.mu.Unlock()

	path := segmentPath(l.fs, l.opts.Dir, v.id, gen)
	f, err := l.fs.Open(path)
	if err != nil {
		return fmt.Errorf("tracker: opening generation %d of %s: %w", gen, vmName, err)
	}
	defer f.Close()
	bufp := l.bufs.Get().(*[]byte)
	defer l.bufs.Put(bufp)
	buf := *bufp
	chunk := uint64(int64(len(buf)) / l.bs)

	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: genIndexPrefix(v.id, gen),
		UpperBound: genIndexPrefix(v.id, gen+1),
	})
	if err != nil {
		return err
	}
	defer it.Close()

	// The index is in block order, the segment in write order: for a
	// generation of scattered writes each data entry is one small slot
	// somewhere in the segment, and reading them one by one waits for
	// each read from the disk in turn (one read in flight). So the
	// entries are taken a window at a time, and before a window is
	// emitted the kernel is asked to read the slots of the next one
	// (sorted by offset, neighbours merged) into the page cache: all of
	// a window's reads are in flight at once, and they overlap with fn
	// consuming the previous window. The preads that follow then copy
	// from the cache. Memory stays bounded: two windows of the page
	// cache, which the kernel can reclaim (a slot reclaimed before it is
	// read is simply read again), and no buffer of ours. Mapping the
	// segment instead would save the copies, but a read error on the
	// disk would then kill the process (SIGBUS) where a pread returns an
	// error; and it would still need the read-ahead to be fast on a cold
	// cache, which is where the time goes.
	pf := newPrefetcher(f, l.bs, l.readAhead)
	valid := it.First()
	fill := func(w []readEntry) ([]readEntry, error) {
		w = w[:0]
		var bytes int64
		for ; valid && bytes < l.readAhead; valid = it.Next() {
			disk, block, e, err := decodeIndex(it.Key(), it.Value())
			if err != nil {
				return w, fmt.Errorf("tracker: generation %d of %s: %w", gen, vmName, err)
			}
			w = append(w, readEntry{disk: disk, block: block, e: e})
			if e.kind == KindData {
				bytes += int64(e.count) * l.bs
			}
		}
		return w, it.Error()
	}
	// Data entries of neighbouring blocks (written at different times, so
	// in different slots) are read into one Record, up to chunk blocks:
	// one call of fn and one Data call of the frame encoder per run (the
	// frame still carries a record per block, consecutive ones sharing
	// their block number).
	var pend struct {
		disk  uint32
		block uint64
		n     uint64 // blocks in buf
	}
	flush := func() error {
		if pend.n == 0 {
			return nil
		}
		r := Record{Disk: names[pend.disk], Kind: KindData, Block: pend.block, Blocks: pend.n, Data: buf[:int64(pend.n)*l.bs]}
		pend.n = 0
		return fn(r)
	}
	emit := func(w []readEntry) error {
		for _, re := range w {
			disk, block, e := re.disk, re.block, re.e
			if e.kind == KindData {
				for done := uint64(0); done < e.count; {
					if pend.n > 0 && (pend.disk != disk || pend.block+pend.n != block+done || pend.n == chunk) {
						if err := flush(); err != nil {
							return err
						}
					}
					if pend.n == 0 {
						pend.disk, pend.block = disk, block+done
					}
					n := min(e.count-done, chunk-pend.n)
					p := buf[int64(pend.n)*l.bs : int64(pend.n+n)*l.bs]
					m, err := f.ReadAt(p, e.arg+int64(done)*l.bs)
					if err != nil && !errors.Is(err, io.EOF) {
						return fmt.Errorf("tracker: reading generation %d of %s: %w", gen, vmName, err)
					}
					if m < len(p) {
						// The segment ends early: a write into it failed. Ship
						// what there is (so shipping is not stuck) and make
						// sure the disk is resynchronized.
						clear(p[m:])
						if d := l.diskByID(disk); d != nil {
							l.markResync(d, fmt.Sprintf("%s (generation %d is short)", reasonDamaged, gen))
						}
					}
					pend.n += n
					done += n
				}
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			r := Record{Disk: names[disk], Kind: e.kind}
			switch e.kind {
			case KindZero:
				r.Block, r.Blocks = block, e.count
			case KindSize:
				r.Size = e.arg
			}
			if err := fn(r); err != nil {
				return err
			}
		}
		return nil
	}

	cur, err := fill(nil)
	if err != nil {
		return err
	}
	pf.prefetch(cur)
	var next []readEntry
	for len(cur) > 0 {
		if next, err = fill(next); err != nil {
			return err
		}
		pf.prefetch(next)
		if err := emit(cur); err != nil {
			return err
		}
		cur, next = next, cur
	}
	return flush()
}

func (l *Log) diskByID(id uint32) *Disk {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.mu.disks[id]
}

func (l *Log) isFrozen(v *vm, gen uint64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, gi := range v.mu.gens {
		if gi.n == gen {
			return gi.frozen
		}
	}
	return false
}

// Drop deletes a frozen generation once the target acknowledged it: its
// index range and its segment file. Dropping a generation that is not
// there (already dropped) returns an error wrapping ErrGeneration.
func (l *Log) Drop(vmName string, gen uint64) error {
	if l.opts.ReadOnly {
		return ErrReadOnly
	}
	v, err := l.lookupVM(vmName)
	if err != nil {
		return err
	}
	v.rotMu.Lock()
	defer v.rotMu.Unlock()
	v.dropMu.Lock()
	defer v.dropMu.Unlock()
	if l.closed.Load() {
		return ErrClosed
	}
	v.mu.Lock()
	var gi *genInfo
	for _, x := range v.mu.gens {
		if x.n == gen && x.frozen {
			gi = x
		}
	}
	v.mu.Unlock()
	if gi == nil {
		return &openError{ErrGeneration, fmt.Sprintf("tracker: VM %s has no frozen generation %d to drop", vmName, gen)}
	}
	b := l.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(genIndexPrefix(v.id, gen), genIndexPrefix(v.id, gen+1), nil); err != nil {
		return err
	}
	if err := b.Delete(genKey(v.id, gen), nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); l.checkSpace(err) != nil {
		return fmt.Errorf("tracker: dropping generation %d of %s: %w", gen, vmName, err)
	}
	v.mu.Lock()
	v.mu.gens = slices.DeleteFunc(v.mu.gens, func(x *genInfo) bool { return x == gi })
	v.mu.Unlock()
	for _, s := range gi.stats {
		l.mu.Lock()
		d := l.mu.disks[s.disk]
		l.mu.Unlock()
		if d != nil {
			d.logBytes.Add(-int64(s.dataBlocks) * l.bs)
		}
	}
	// A segment left behind by a failure here is removed at the next Open.
	if err := l.fs.Remove(segmentPath(l.fs, l.opts.Dir, v.id, gen)); err != nil {
		return fmt.Errorf("tracker: removing the segment of generation %d of %s: %w", gen, vmName, err)
	}
	// The space given back may make room for the reserve again.
	l.restoreReserve()
	return nil
}

// VMStatus describes one VM of the log.
type VMStatus struct {
	Name        string             `json:"name"`
	Active      uint64             `json:"active"` // the active generation; 0 if none
	Generations []GenerationStatus `json:"generations"`
	Disks       []DiskStatus       `json:"disks"`
}

// GenerationStatus describes one generation not yet dropped.
type GenerationStatus struct {
	Gen     uint64                 `json:"generation"`
	Frozen  bool                   `json:"frozen"`
	Created time.Time              `json:"created"`
	Disks   []GenerationDiskStatus `json:"disks"`
}

// GenerationDiskStatus is what a generation holds for one disk. For the
// active generation the counts include blocks past the disk's end that
// freezing leaves out.
type GenerationDiskStatus struct {
	Disk       string `json:"disk"`
	DataBlocks uint64 `json:"data_blocks"`
	ZeroBlocks uint64 `json:"zero_blocks"`
	Bytes      int64  `json:"bytes"` // DataBlocks × block size
	Size       int64  `json:"size"`  // the disk's size at the end of the generation (so far)
	Removed    bool   `json:"removed,omitempty"`
}

// DiskStatus describes one disk.
type DiskStatus struct {
	Name     string    `json:"name"` // inside the VM
	Size     int64     `json:"size"`
	LogBytes int64     `json:"log_bytes"` // data held in the generations not yet dropped
	Resync   bool      `json:"resync_required"`
	Reason   string    `json:"resync_reason,omitempty"`
	Since    time.Time `json:"resync_since,omitzero"`
	Removed  bool      `json:"removed,omitempty"`
}

// Clean reports whether the log had been closed cleanly before this Open.
func (l *Log) Clean() bool { return !l.dirty }

// Status describes every VM: its generations and its disks.
func (l *Log) Status() []VMStatus {
	var out []VMStatus
	for _, name := range l.VMs() {
		v, err := l.lookupVM(name)
		if err != nil {
			continue
		}
		out = append(out, l.vmStatus(v))
	}
	return out
}

func (l *Log) vmStatus(v *vm) VMStatus {
	v.rw.RLock()
	defer v.rw.RUnlock()
	l.mu.Lock()
	st := VMStatus{Name: v.name}
	var disks []*Disk
	for _, d := range l.mu.disks {
		if d.v == v {
			disks = append(disks, d)
		}
	}
	sort.Slice(disks, func(i, j int) bool { return disks[i].id < disks[j].id })
	names := make(map[uint32]string)
	for _, d := range disks {
		names[d.id] = l.diskName(d.meta.rel)
		st.Disks = append(st.Disks, DiskStatus{
			Name:     names[d.id],
			LogBytes: d.logBytes.Load(),
			Resync:   d.meta.resync,
			Reason:   d.meta.reason,
			Since:    d.meta.since,
			Removed:  d.meta.removed,
		})
	}
	l.mu.Unlock()
	for i, d := range disks {
		d.mu.Lock()
		st.Disks[i].Size = d.mu.size
		d.mu.Unlock()
	}
	if v.active != nil {
		st.Active = v.active.n
	}
	v.mu.Lock()
	gens := slices.Clone(v.mu.gens)
	v.mu.Unlock()
	for _, gi := range gens {
		gs := GenerationStatus{Gen: gi.n, Created: gi.created}
		v.mu.Lock()
		frozen, stats, live := gi.frozen, gi.stats, gi.live
		v.mu.Unlock()
		gs.Frozen = frozen
		if !frozen && live != nil {
			stats = l.liveStats(live, disks)
		}
		for _, s := range stats {
			gs.Disks = append(gs.Disks, GenerationDiskStatus{
				Disk:       names[s.disk],
				DataBlocks: s.dataBlocks,
				ZeroBlocks: s.zeroBlocks,
				Bytes:      int64(s.dataBlocks) * l.bs,
				Size:       s.size,
				Removed:    s.removed,
			})
		}
		st.Generations = append(st.Generations, gs)
	}
	return st
}

// ActiveBytes returns the data the active generation of a VM holds: its
// changed blocks, each once, times the block size. It is what the next
// Rotate freezes, and grows with the VM's writes; the agent cuts a
// generation before its interval when it grows past a limit.
func (l *Log) ActiveBytes(vmName string) (int64, error) {
	v, err := l.lookupVM(vmName)
	if err != nil {
		return 0, err
	}
	v.rw.RLock()
	defer v.rw.RUnlock()
	if v.active == nil {
		return 0, nil
	}
	var disks []*Disk
	l.mu.Lock()
	for _, d := range l.mu.disks {
		if d.v == v {
			disks = append(disks, d)
		}
	}
	l.mu.Unlock()
	var blocks uint64
	for _, s := range l.liveStats(v.active, disks) {
		blocks += s.dataBlocks
	}
	return int64(blocks) * l.bs, nil
}

// liveStats counts what a generation not yet frozen holds. v.rw must be
// held shared.
func (l *Log) liveStats(g *generation, disks []*Disk) []genDiskStat {
	var stats []genDiskStat
	for _, d := range disks {
		g.mu.Lock()
		gd := g.mu.disks[d.id]
		g.mu.Unlock()
		if gd == nil {
			continue
		}
		d.mu.Lock()
		stats = append(stats, genDiskStat{
			disk:       d.id,
			dataBlocks: uint64(len(gd.blocks)),
			zeroBlocks: gd.zeros.blocks,
			size:       gd.size,
			removed:    gd.removed,
		})
		d.mu.Unlock()
	}
	return stats
}
