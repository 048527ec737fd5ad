package tracker

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/drfs-project/drfs/internal/units"
)

// reasonHot begins the reason of a disk flagged after a crash of the host
// with only its hot extents to compare (HotReason).
const reasonHot = "recovering "

// HotReason is the resync reason of a disk that a crash of the host left
// with n hot extents of bytes bytes to compare with the replica.
func HotReason(n int, bytes int64) string {
	return fmt.Sprintf("%s%d hot extent(s) (%s) after a crash of the host", reasonHot, n, units.Bytes(bytes))
}

// IsHotReason reports whether a resync reason is HotReason's: the disk's
// tracking is lost only inside its hot extents (Log.ResyncRanges).
func IsHotReason(reason string) bool {
	return strings.HasPrefix(reason, reasonHot) && strings.HasSuffix(reason, "after a crash of the host")
}

// bootSlack is how far after the host's start a disk's ctime may be and
// still be taken as from before the crash: the boot time the kernel gives
// comes from a clock read at boot, in whole seconds on a PC's RTC, and a
// virtual machine may be back within a second of its crash.
const bootSlack = int64(2 * time.Second)

// bootTime is when this boot of the host began, Unix nanoseconds; 0 when
// the system does not say. Tests replace it to simulate a reboot, or set
// DRFS_TEST_BOOT_TIME (Unix nanoseconds) for the binary. Not for use
// outside tests.
var bootTime = func() int64 {
	if ns, err := strconv.ParseInt(os.Getenv("DRFS_TEST_BOOT_TIME"), 10, 64); err == nil {
		return ns
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if s, ok := strings.CutPrefix(line, "btime "); ok {
			if sec, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64); err == nil {
				return sec * int64(time.Second)
			}
		}
	}
	return 0
}

// activityPath is the activity log's file.
func (l *Log) activityPath() string { return l.fs.PathJoin(l.opts.Dir, activityName) }

// startActivity empties the activity log for this process, once Open
// acted on what the previous one left, or removes it when the log keeps
// none: a stale table must never be read as this process's.
func (l *Log) startActivity() error {
	path := l.activityPath()
	if l.opts.NoActivity {
		if err := l.fs.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("tracker: removing the activity log %s: %w", path, err)
		}
		return syncDir(l.fs, l.opts.Dir)
	}
	a, err := openActivity(l.fs, path, l.opts.ActivityExtent, l.opts.ActivitySlots)
	if err != nil {
		if rerr := l.fs.Remove(path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			return fmt.Errorf("%v; removing it: %w", err, rerr)
		}
		// Without it a crash of the host resynchronizes every disk, as
		// before the activity log.
		return syncDir(l.fs, l.opts.Dir)
	}
	if err := syncDir(l.fs, l.opts.Dir); err != nil {
		a.close()
		return fmt.Errorf("tracker: syncing state directory %s: %w", l.opts.Dir, err)
	}
	l.activity = a
	l.stopCool = make(chan struct{})
	l.coolDone = make(chan struct{})
	go l.cooler()
	return nil
}

// stopActivity ends the cooler; with clean, after the clean-shutdown
// marker is stored, it removes the file, which no crash can need any
// more.
func (l *Log) stopActivity(clean bool) {
	a := l.activity
	if a == nil {
		return
	}
	close(l.stopCool)
	<-l.coolDone
	a.close()
	if clean {
		l.fs.Remove(l.activityPath())
	}
}

// cooler cools the extents of the activity log until Close: every
// coolEvery those idle for a whole period (syncing the hot disks and the
// log first if one of them changed since the last sync), and sooner when
// the table is half full.
func (l *Log) cooler() {
	defer close(l.coolDone)
	a := l.activity
	tick := time.NewTicker(coolEvery)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case <-l.stopCool:
			return
		case <-a.wake:
			// At most one early cooling a second: extents written all
			// the time do not cool, however often the disks are synced.
			select {
			case <-l.stopCool:
				return
			case <-time.After(time.Until(last.Add(time.Second))):
			}
			// Those not changed since the sync before this one.
			bound := a.lastSettled()
			// A disk that failed to sync stays hot (settle).
			l.settle()
			a.cool(bound)
			last = time.Now()
		case <-tick.C:
			l.coolIdle()
		}
	}
}

// coolIdle ends a cooling period: the extents not changed during it cool,
// after a sync of the disks and the log if one of them changed since the
// last sync.
func (l *Log) coolIdle() error {
	bound, sync := l.activity.tick()
	var err error
	if sync {
		err = l.settle() // a disk that failed to sync stays hot
	}
	return errors.Join(err, l.activity.cool(bound))
}

// settle makes every change that has ended durable in the disks' files
// and in the log, so that the extents it covered can cool. A disk whose
// file cannot be synced is flagged (the kernel may have dropped
// its unwritten pages), and its extents stay hot.
func (l *Log) settle() error {
	a := l.activity
	l.settleMu.Lock()
	defer l.settleMu.Unlock()
	disks, clock := a.settling()
	failed := map[uint32]bool{}
	var errs []error
	for id := range disks {
		l.mu.Lock()
		d := l.mu.disks[id]
		var rel string
		if d != nil && !d.meta.removed {
			rel = d.meta.rel
		}
		l.mu.Unlock()
		if rel == "" {
			continue
		}
		if err := l.syncFile(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			failed[id] = true
			errs = append(errs, err)
			l.markResync(d, fmt.Sprintf("syncing the disk's file failed: %v", err))
		}
	}
	for _, v := range l.allVMs() {
		v.mu.Lock()
		gens := append([]*generation(nil), v.mu.unsynced...)
		v.mu.Unlock()
		for _, g := range gens {
			if g.seg.f == nil {
				continue
			}
			if err := g.seg.syncData(); err != nil {
				reason := fmt.Sprintf("%s: %v", reasonSync, err)
				l.markGenerationResync(g, reason)
				errs = append(errs, err)
				g.mu.Lock()
				for id := range g.mu.disks {
					failed[id] = true
				}
				g.mu.Unlock()
			}
		}
	}
	a.settledAt(clock, failed)
	return errors.Join(errs...)
}

// syncFile syncs the file of the disk at rel to stable storage.
func (l *Log) syncFile(rel string) error {
	if l.opts.SyncFile != nil {
		return l.opts.SyncFile(rel)
	}
	f, err := os.Open(l.sourcePath(rel))
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// beginActivity makes the extents of a change of d hot (see activity).
func (l *Log) beginActivity(d *Disk, off, n int64) uint32 {
	d.mu.Lock()
	size := d.mu.size
	d.mu.Unlock()
	return l.activity.begin(d.id, off, n, size, l.settle, func(err error) {
		if !d.flagged.Load() {
			l.markResync(d, fmt.Sprintf("activity log write failed: %v", err))
		}
	})
}

// recoverHot finishes the recovery from a crash of the host when the
// previous process kept an activity log: a disk with hot extents is
// flagged to compare only them; one hot whole, or changed since this boot
// began (drfs was down; a change in the first bootSlack is not told from
// one before the crash), is flagged whole; the others lost nothing.
func (l *Log) recoverHot(disks []*Disk, st activityState) {
	l.recovered = Recovery{HostCrash: true, Pending: l.opts.ReadOnly}
	boot := bootTime()
	for _, d := range disks {
		if d.meta.removed {
			continue
		}
		fst, ok := statFile(l.sourcePath(d.meta.rel))
		switch {
		case !ok:
			l.markResync(d, reasonOutside+" while drfs was down: the file is missing")
		case boot > 0 && fst.ctime > boot+bootSlack:
			l.markResync(d, fmt.Sprintf("%s while drfs was down: inode changed %s (ctime), after the host started at %s",
				reasonOutside, stamp(fst.ctime), stamp(boot)))
		case st.whole[d.id]:
			l.markResync(d, reasonDirty+" (a change of the whole disk was in flight at the crash of the host)")
		case len(clipExtents(st.ranges[d.id], fst.size)) > 0:
			// Extents past the end of the file (made hot ahead of a
			// sequential writer) hold nothing to compare.
			rs := clipExtents(st.ranges[d.id], fst.size)
			var bytes int64
			for _, r := range rs {
				bytes += r.Len
			}
			n := min(st.count[d.id], int((bytes+st.extent-1)/st.extent))
			l.recovered.HotExtents += n
			l.recovered.HotBytes += bytes
			l.markHot(d, rs, HotReason(n, bytes))
		}
	}
}

// clipExtents returns the part of rs before size.
func clipExtents(rs []Extent, size int64) []Extent {
	var out []Extent
	for _, r := range rs {
		if r.Off >= size {
			break
		}
		out = append(out, Extent{r.Off, min(r.Len, size-r.Off)})
	}
	return out
}

// markHot flags d to compare only the byte ranges rs, unless it is
// flagged already (the whole disk is then compared).
func (l *Log) markHot(d *Disk, rs []Extent, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed.Load() || d.meta.resync {
		return
	}
	d.flagLocked(reason)
	d.meta.hot = rs
	l.persistDiskLocked(d)
}

// ResyncRanges returns the byte ranges to which the resync of a flagged
// disk may be limited (its hot extents after a crash of the host), or nil
// when the whole disk must be compared (or it is not flagged).
func (l *Log) ResyncRanges(vmName, disk string) []Extent {
	d := l.findDisk(vmName, disk)
	if d == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if !d.meta.resync {
		return nil
	}
	return append([]Extent(nil), d.meta.hot...)
}

// MarkResyncRanges is MarkResync limited to the byte ranges rs (nil: the
// whole disk), for a resync of hot extents that failed and must run
// again. reason is the disk's reason then.
func (l *Log) MarkResyncRanges(vmName, disk, reason string, rs []Extent) {
	d := l.findDisk(vmName, disk)
	if d == nil {
		return
	}
	if rs == nil {
		l.markResync(d, reason)
		return
	}
	l.markHot(d, rs, reason)
}
