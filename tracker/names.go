package tracker

import (
	"encoding/binary"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// splitRel maps a path relative to the source directory to its VM and disk
// name: every top-level folder is a VM and every file under it a disk named
// by its path inside the folder; a file at the top is a VM of one disk,
// both named after the file.
func (l *Log) splitRel(rel string) (vmName, disk string, ok bool) {
	if rel == "" || rel == "." || path.IsAbs(rel) || path.Clean(rel) != rel ||
		rel == ".." || strings.HasPrefix(rel, "../") {
		return "", "", false
	}
	if s := l.stateRel(); s != "" && (rel == s || strings.HasPrefix(rel, s+"/")) {
		return "", "", false
	}
	i := strings.IndexByte(rel, '/')
	if i < 0 {
		return rel, rel, true
	}
	return rel[:i], rel[i+1:], true
}

// stateRel is the state directory relative to the source directory when it
// lies inside it (its files are not disks), or "".
func (l *Log) stateRel() string {
	if !filepath.IsAbs(l.opts.Dir) {
		return ""
	}
	r, err := filepath.Rel(l.opts.Source, filepath.Clean(l.opts.Dir))
	if err != nil || r == "." || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return ""
	}
	return filepath.ToSlash(r)
}

// diskName is the name of a disk inside its VM.
func (l *Log) diskName(rel string) string {
	if _, name, ok := l.splitRel(rel); ok {
		return name
	}
	return rel
}

// OpenDisk returns the recorder of the disk at rel (slash separated,
// relative to the source directory) whose file is size bytes long now, or
// nil, nil when rel is not a disk. Opening the same disk again returns the
// same *Disk. A disk the log has not seen is tracked from now on; its
// initial copy is the orchestrator's business.
//
// Note for adapters: return a nil interface, not a nil *Disk, for "not a
// disk".
func (l *Log) OpenDisk(rel string, size int64) (*Disk, error) {
	vmName, _, ok := l.splitRel(rel)
	if !ok {
		return nil, nil
	}
	if l.opts.ReadOnly {
		return nil, ErrReadOnly
	}
	l.nameMu.Lock()
	defer l.nameMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return nil, ErrClosed
	}
	if d := l.mu.byRel[rel]; d != nil {
		d.refs++
		d.mu.Lock()
		known, gd := d.mu.size, d.mu.gd
		d.mu.Unlock()
		if known != size && !d.meta.resync {
			// The file is not the length the log last saw: it changed
			// while nobody was recording it.
			d.flagLocked(fmt.Sprintf("%s: %d bytes, the log has %d", reasonSize, size, known))
			d.mu.Lock()
			d.mu.size = size
			if gd != nil && d.mu.gd == gd {
				gd.size, gd.maxSize = size, max(gd.maxSize, size)
			}
			d.mu.Unlock()
		}
		return d, nil
	}
	v := l.mu.vms[vmName]
	if v == nil {
		var err error
		if v, err = l.newVMLocked(vmName); err != nil {
			return nil, fmt.Errorf("tracker: adding VM %s: %w", vmName, err)
		}
	}
	d, err := l.newDiskLocked(v, rel, size)
	if err != nil {
		return nil, err
	}
	d.refs++
	return d, nil
}

// newDiskLocked adds a disk to v and stores it before any record of it can
// be written. Log.mu must be held.
func (l *Log) newDiskLocked(v *vm, rel string, size int64) (*Disk, error) {
	d := l.newDiskObject(v, l.mu.nextDisk, rel)
	d.mu.size = size
	b := l.db.NewBatch()
	defer b.Close()
	_ = b.Set(diskKey(v.id, d.id), d.recordLocked().encode(), nil)
	_ = b.Set(sizeKey(v.id, d.id), binary.AppendVarint(nil, size), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return nil, fmt.Errorf("tracker: adding disk %s: %w", rel, err)
	}
	l.mu.nextDisk++
	l.mu.disks[d.id] = d
	l.mu.byRel[rel] = d
	l.watchLocked(d)
	return d, nil
}

// newVMLocked adds a VM with its first generation. Log.mu must be held.
func (l *Log) newVMLocked(name string) (*vm, error) {
	v := &vm{id: l.mu.nextVM, name: name}
	if err := l.db.Set(vmKey(v.id), vmRecord{name: name}.encode(), pebble.Sync); err != nil {
		return nil, err
	}
	l.mu.nextVM++
	gi, err := l.newGeneration(v, 1)
	if err != nil {
		// The VM record stays; the next Open gives it a generation.
		return nil, err
	}
	v.active = gi.live
	v.mu.gens = []*genInfo{gi}
	v.mu.unsynced = []*generation{gi.live}
	l.mu.vms[name] = v
	l.mu.vmByID[v.id] = v
	return v, nil
}

// Renamed reports that the file or folder from is now at to. The disks
// under it stay tracked under their new names and are marked for
// resynchronization: the replica still has the old name. A disk that moves
// to another VM is removed from the old one and tracked in the new one. A
// disk that the rename replaced is removed.
func (l *Log) Renamed(from, to string) {
	if l.opts.ReadOnly || from == to {
		return
	}
	l.nameMu.Lock()
	defer l.nameMu.Unlock()
	l.mu.Lock()
	if l.closed.Load() {
		l.mu.Unlock()
		return
	}
	moved := l.disksUnderLocked(from)
	var replaced []*Disk
	if len(moved) > 0 {
		replaced = l.disksUnderLocked(to)
	}
	l.mu.Unlock()
	if len(moved) == 0 {
		return
	}
	for _, d := range replaced {
		l.removeDisk(d)
	}

	// A whole VM renamed at the top level keeps its id and generations.
	l.mu.Lock()
	if v := l.mu.vms[from]; v != nil && !strings.Contains(to, "/") && l.mu.vms[to] == nil &&
		len(l.liveDisksLocked(v)) == len(moved) {
		if _, _, ok := l.splitRel(to); ok {
			l.renameVMLocked(v, from, to, moved)
			l.mu.Unlock()
			return
		}
	}
	l.mu.Unlock()

	for _, d := range moved {
		newRel := to + strings.TrimPrefix(d.meta.rel, from)
		vmName, _, ok := l.splitRel(newRel)
		switch {
		case !ok:
			l.removeDisk(d)
		case vmName == l.vmName(d.v):
			l.mu.Lock()
			old := d.meta.rel
			delete(l.mu.byRel, old)
			d.meta.rel = newRel
			l.mu.byRel[newRel] = d
			if !d.flagLocked(fmt.Sprintf("%s from %s", reasonRenamed, old)) {
				l.persistDiskLocked(d)
			}
			l.mu.Unlock()
		default:
			l.moveDisk(d, vmName, newRel)
		}
	}
}

func (l *Log) vmName(v *vm) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return v.name
}

// disksUnderLocked returns the present disks at rel or under the folder
// rel, by id.
func (l *Log) disksUnderLocked(rel string) []*Disk {
	var ds []*Disk
	for r, d := range l.mu.byRel {
		if r == rel || strings.HasPrefix(r, rel+"/") {
			ds = append(ds, d)
		}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].id < ds[j].id })
	return ds
}

func (l *Log) liveDisksLocked(v *vm) []*Disk {
	var ds []*Disk
	for _, d := range l.mu.byRel {
		if d.v == v {
			ds = append(ds, d)
		}
	}
	return ds
}

func (l *Log) renameVMLocked(v *vm, from, to string, disks []*Disk) {
	delete(l.mu.vms, from)
	v.name = to
	l.mu.vms[to] = v
	_ = l.db.Set(vmKey(v.id), vmRecord{name: to}.encode(), pebble.Sync)
	for _, d := range disks {
		old := d.meta.rel
		delete(l.mu.byRel, old)
		d.meta.rel = to + strings.TrimPrefix(old, from)
		l.mu.byRel[d.meta.rel] = d
		if !d.flagLocked(fmt.Sprintf("%s from %s", reasonRenamed, old)) {
			l.persistDiskLocked(d)
		}
	}
}

// moveDisk moves d to VM vmName as a new disk at rel: its generations
// there start now, so it is marked for resynchronization. Changes reported
// through d are recorded under the new disk from then on.
func (l *Log) moveDisk(d *Disk, vmName, rel string) {
	l.mu.Lock()
	v := l.mu.vms[vmName]
	var err error
	if v == nil {
		v, err = l.newVMLocked(vmName)
	}
	var nd *Disk
	if err == nil {
		nd, err = l.newDiskLocked(v, rel, 0)
	}
	old := d.meta.rel
	l.mu.Unlock()
	if err != nil {
		// Cannot track it at its new place: forget it (the old VM ships
		// its removal) and let the next OpenDisk of rel start over.
		l.removeDisk(d)
		return
	}
	size := l.retire(d, nd, true)
	nd.mu.Lock()
	nd.mu.size = size
	nd.mu.Unlock()
	l.mu.Lock()
	nd.refs = d.refs
	if nd.flagLocked(fmt.Sprintf("%s: was %s", reasonMoved, old)) {
		l.persistDiskLocked(nd)
	}
	l.mu.Unlock()
}

// Removed reports that the file at rel was removed from the source. Its
// removal is recorded in its VM's active generation; changes reported
// through its Disk afterwards are ignored.
func (l *Log) Removed(rel string) {
	if l.opts.ReadOnly {
		return
	}
	l.nameMu.Lock()
	defer l.nameMu.Unlock()
	l.mu.Lock()
	d := l.mu.byRel[rel]
	l.mu.Unlock()
	if d != nil {
		l.removeDisk(d)
	}
}

func (l *Log) removeDisk(d *Disk) {
	l.retire(d, nil, false)
}

// retire ends the tracking of d in its VM: a removed record goes into the
// active generation and d ignores changes from then on, or forwards them
// to next when next is not nil. It returns d's size.
func (l *Log) retire(d *Disk, next *Disk, exclusive bool) int64 {
	v := d.v
	if exclusive {
		v.rw.Lock()
	} else {
		v.rw.RLock()
	}
	var size int64
	if !l.closed.Load() && v.active != nil {
		o := l.getOp()
		g := v.active
		d.mu.Lock()
		size = d.mu.size
		if !d.mu.removed {
			gd := d.genDiskLocked(g)
			n := gd.markRemoved()
			d.mu.removed = true
			h := recHeader{kind: KindRemoved, disk: d.id, size: gd.size, maxSize: gd.maxSize}
			o.runs = append(o.runs, run{off: g.seg.reserve(recHeaderSize), hdr: o.addHeader(&h)})
			d.logBytes.Add(-int64(n) * l.bs)
		}
		d.mu.Unlock()
		if err := o.write(g.seg.f, l.bs); err != nil {
			g.broken.Store(true)
		}
		g.seg.done.Add(1)
		l.ops.Put(o)
		if next != nil {
			d.forward.Store(next)
		}
	}
	if exclusive {
		v.rw.Unlock()
	} else {
		v.rw.RUnlock()
	}
	l.mu.Lock()
	if l.mu.byRel[d.meta.rel] == d {
		delete(l.mu.byRel, d.meta.rel)
	}
	d.meta.removed = true
	if !l.closed.Load() {
		l.persistDiskLocked(d)
	}
	l.mu.Unlock()
	return size
}

// MarkResync marks a disk of a VM for resynchronization with a reason. It
// does nothing for an unknown disk, or one already marked (the first reason
// stays).
func (l *Log) MarkResync(vmName, disk, reason string) {
	if d := l.findDisk(vmName, disk); d != nil {
		l.markResync(d, reason)
	}
}

// ClearResync clears the resynchronization mark of a disk, once its replica
// was repaired.
func (l *Log) ClearResync(vmName, disk string) {
	d := l.findDisk(vmName, disk)
	if d == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !d.meta.resync || l.closed.Load() {
		return
	}
	d.meta.resync, d.meta.reason, d.meta.since, d.meta.hot = false, "", time.Time{}, nil
	d.flagged.Store(false)
	d.unlogged.Store(false)
	if !l.opts.ReadOnly {
		l.persistDiskLocked(d)
	}
}

func (l *Log) findDisk(vmName, disk string) *Disk {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.mu.vms[vmName]
	if v == nil {
		return nil
	}
	for _, d := range l.mu.byRel {
		if d.v == v && l.diskName(d.meta.rel) == disk {
			return d
		}
	}
	return nil
}

// markResync marks d for resynchronization, durably unless read-only. It
// never fails: if the mark cannot be stored, Sync reports it.
func (l *Log) markResync(d *Disk, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() {
		return
	}
	if d.flagLocked(reason) {
		l.persistDiskLocked(d)
	}
}

// markLost marks d for resynchronization because its changes are no longer
// logged (a write of its records failed), and stops logging them. A mark
// set before for another reason (a log over the threshold, whose tracking
// is intact) takes this reason, which says the tracking is lost.
func (l *Log) markLost(d *Disk, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() || d.unlogged.Load() {
		return
	}
	d.unlogged.Store(true)
	if !d.flagLocked(reason) {
		d.meta.reason = reason
	}
	l.persistDiskLocked(d)
}

// flagLocked sets the resync mark in memory and reports whether it was not
// set before. Log.mu must be held.
func (d *Disk) flagLocked(reason string) bool {
	if d.meta.resync {
		if d.meta.hot == nil {
			return false
		}
		// Flagged to compare its hot extents only: the new reason needs
		// the whole disk compared, and the tracking lost at the crash
		// stays said.
		d.meta.hot = nil
		d.meta.reason = fmt.Sprintf("%s (a crash of the host, then: %s)", reasonDirty, reason)
		return true
	}
	d.meta.resync, d.meta.reason, d.meta.since = true, reason, d.l.now()
	d.flagged.Store(true)
	return true
}

// persistDiskLocked stores d's record; on failure it is kept in memory and
// Sync retries. Log.mu must be held.
func (l *Log) persistDiskLocked(d *Disk) error {
	if l.opts.ReadOnly {
		return nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	b.Set(diskKey(d.v.id, d.id), d.recordLocked().encode(), nil)
	if d.meta.hot != nil {
		b.Set(hotKey(d.v.id, d.id), encodeHot(d.meta.hot), nil)
	} else {
		b.Delete(hotKey(d.v.id, d.id), nil)
	}
	err := l.checkSpace(b.Commit(pebble.Sync))
	d.meta.unsaved = err != nil
	return err
}

// markGenerationResync marks every disk with changes in g.
func (l *Log) markGenerationResync(g *generation, reason string) {
	g.mu.Lock()
	ids := make([]uint32, 0, len(g.mu.disks))
	for id := range g.mu.disks {
		ids = append(ids, id)
	}
	g.mu.Unlock()
	for _, id := range ids {
		l.mu.Lock()
		d := l.mu.disks[id]
		l.mu.Unlock()
		if d != nil {
			l.markResync(d, reason)
		}
	}
}
