package tracker

import (
	"fmt"
	"time"
)

// A disk's file may be changed behind the mount's back while the mount
// runs: by a process that writes the source file itself. Such a change is
// in no generation. CheckOutside notices it at each cut from the file's
// stat, the rule being that every change of the file's size, mtime or
// ctime since the last cut must be explained by a change the mount
// reported (docs/resync.md, trigger 3).
//
// The write path pays one clock read per change (touch); the comparison,
// a stat per disk, is made at the cut.

// fileState is what a stat of a disk's file says of its changes.
type fileState struct {
	size  int64
	mtime int64 // unix nanoseconds
	ctime int64 // unix nanoseconds; 0 where the system gives none
	inode uint64
}

// fileWatch is a disk's file as the last cut (or the disk's opening) found
// it, with when the mount had changed it last by then.
type fileWatch struct {
	ok        bool
	state     fileState
	changedAt int64
}

// touch records that the mount has just changed the disk's file. It is
// called after the change was made to the file (before the change is
// reported), so the file's ctime is not later than the time it records.
// The wall clock is the one the file system stamps ctime with.
func (d *Disk) touch() {
	now := time.Now().UnixNano()
	d.changedAt.Store(now)
	if t := d.l.inflight; t != nil {
		t.vouch(d.id, now)
	}
}

// Touched records that the mount changed the file's metadata (mode, owner,
// times, extended attributes) or reserved space for it: its ctime moved,
// although no block of it changed. Call it after the change.
func (d *Disk) Touched() {
	if d, ok := d.enter(); ok {
		d.touch()
		d.v.rw.RUnlock()
	}
}

// OutsideChange is a disk that CheckOutside found changed behind the
// mount's back.
type OutsideChange struct {
	Disk   string // the disk's name inside its VM
	Reason string // the reason it is flagged with
}

// reasonBehind starts the reason of a disk changed outside the mount while
// the mount ran.
const reasonBehind = reasonOutside + " while mounted: "

// CheckOutside compares the file of every disk of a VM with the file as
// the last check found it, and flags for resynchronization those that
// changed behind the mount's back: their change is in no generation. The
// caller holds the changes of the VM's disks through the mount (fs
// quiesce), so that every change the mount made to the files has been
// reported; after the mount stopped nothing needs holding. It makes the
// check at each cut, after Rotate.
//
// A disk whose file the mount did not change since the last check must
// have the same size, mtime and ctime as then. One that the mount changed
// must have a ctime no later than the mount's last change: a change after
// that is someone else's. (A change behind the back followed, in the same
// interval, by one of the mount's goes unnoticed: its ctime is gone.)
//
// covered, if not nil, names disks whose check only records their file as
// it is now: a copy taken at this cut covers whatever changed them. It
// returns the disks it flagged.
func (l *Log) CheckOutside(vmName string, covered func(disk string) bool) []OutsideChange {
	if l.opts.ReadOnly {
		return nil
	}
	v, err := l.lookupVM(vmName)
	if err != nil {
		return nil
	}
	l.mu.Lock()
	disks := l.liveDisksLocked(v)
	l.mu.Unlock()
	var out []OutsideChange
	for _, d := range disks {
		l.mu.Lock()
		rel, removed, w := d.meta.rel, d.meta.removed, d.watch
		l.mu.Unlock()
		if removed {
			continue
		}
		// Read the mount's last change before the stat: with the changes
		// held, it cannot move in between.
		changedAt := d.changedAt.Load()
		s, ok := statFile(l.sourcePath(rel))
		name := l.diskName(rel)
		why := ""
		if ok && w.ok && (covered == nil || !covered(name)) {
			why = behind(w, s, changedAt)
		}
		l.mu.Lock()
		if d.meta.rel == rel {
			d.watch = fileWatch{ok: ok, state: s, changedAt: changedAt}
			l.vouchLocked(d)
		}
		l.mu.Unlock()
		if why != "" {
			l.markResync(d, reasonBehind+why)
			out = append(out, OutsideChange{Disk: name, Reason: reasonBehind + why})
		}
	}
	return out
}

// behind says how a file found as s, when the mount's last change was at
// changedAt, was changed behind the mount's back since it was found as w;
// "" if it was not.
func behind(w fileWatch, s fileState, changedAt int64) string {
	was := w.state
	switch {
	case s.inode != was.inode:
		return fmt.Sprintf("the file was replaced (inode %d, was %d)", s.inode, was.inode)
	case changedAt == w.changedAt:
		// The mount did not change it: nothing else may have.
		switch {
		case s.size != was.size:
			return fmt.Sprintf("size %d, was %d at the last cut, and the mount did not change it since", s.size, was.size)
		case s.mtime != was.mtime:
			return fmt.Sprintf("modified %s, was %s at the last cut, and the mount did not change it since", stamp(s.mtime), stamp(was.mtime))
		case s.ctime != was.ctime:
			return fmt.Sprintf("inode changed %s (ctime), was %s at the last cut, and the mount did not change it since", stamp(s.ctime), stamp(was.ctime))
		}
	case s.ctime > changedAt:
		return fmt.Sprintf("inode changed %s (ctime), after the mount's last change at %s", stamp(s.ctime), stamp(changedAt))
	}
	return ""
}

func stamp(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

// watchLocked records d's file as it is now, the base of the first check.
// Log.mu is held.
func (l *Log) watchLocked(d *Disk) {
	s, ok := statFile(l.sourcePath(d.meta.rel))
	d.watch = fileWatch{ok: ok, state: s, changedAt: d.changedAt.Load()}
	l.vouchLocked(d)
}

// vouchLocked records in the in-flight table the newest ctime of d's file
// that is explained: the file as the last check found it, or the mount's
// last change. After a process crash, a newer ctime is someone else's
// change. Log.mu is held.
func (l *Log) vouchLocked(d *Disk) {
	if l.inflight != nil && d.watch.ok {
		l.inflight.vouch(d.id, max(d.watch.state.ctime, d.changedAt.Load()))
	}
}
