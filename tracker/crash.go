package tracker

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Recovery is what Open did because the previous process had not closed
// the log.
type Recovery struct {
	// ProcessCrash: that process died and the host did not, so its
	// writes were all in the page cache and the in-flight table told
	// what it had not finished. Without it (a host crash, a state
	// directory that is not on the operating system's file system, or a
	// drfs without the table) every disk is resynchronized.
	ProcessCrash bool
	// InFlight is the number of changes that were in flight.
	InFlight int
	// Reread is how many bytes of the disks' files were read to record
	// those changes again.
	Reread int64
	// HostCrash: the host crashed (or the table was not kept) and the
	// previous process kept an activity log: only the disks' hot extents
	// are compared with their replicas, HotExtents ranges of HotBytes
	// bytes in all. Without an activity log every disk is resynchronized
	// whole.
	HostCrash  bool
	HotExtents int
	HotBytes   int64
	// Pending: the log was opened read-only, so nothing was recorded
	// again yet; the next Open that may write does it.
	Pending bool
}

// Recovered reports what Open did after an unclean stop; the zero value
// after a clean one.
func (l *Log) Recovered() Recovery { return l.recovered }

// crashBound is when the previous process died at the latest: its last
// heartbeat (or the start of a change in flight, if later) plus the
// heartbeat's period, plus the granularity of the clock that stamps ctimes.
func (cs crashState) crashBound(ins []intent) int64 {
	last := cs.beat
	for _, in := range ins {
		last = max(last, in.started)
	}
	return last + int64(beatPeriod+10*time.Millisecond)
}

// recoverInFlight finishes the recovery from a process crash. The scan of
// the segments has replayed every record the process wrote; what may be
// missing or torn is the changes it had in flight, which the table names:
// their ranges are recorded again from the disks' files. A disk whose file
// changed after the mount's last change was changed while drfs was down,
// and is flagged instead.
func (l *Log) recoverInFlight(disks []*Disk) {
	cs := l.crash
	l.recovered = Recovery{ProcessCrash: true, InFlight: len(cs.intents), Pending: l.opts.ReadOnly}
	byDisk := make(map[uint32][]intent)
	for _, in := range cs.intents {
		byDisk[in.disk] = append(byDisk[in.disk], in)
	}
	for _, d := range disks {
		if d.meta.removed {
			continue
		}
		path := l.sourcePath(d.meta.rel)
		st, ok := statFile(path)
		ins := byDisk[d.id]
		// A disk flagged already keeps its reason (and its resync's
		// cursor): only its changes in flight are recorded again, for
		// the part its resync compared before the crash.
		if !d.flagged.Load() {
			if why := cs.changedWhileDown(d.id, st, ok, ins); why != "" {
				l.markResync(d, why)
				continue
			}
		}
		if !ok {
			continue
		}
		d.mu.Lock()
		size := d.mu.size
		d.mu.Unlock()
		if l.opts.ReadOnly || len(ins) == 0 && size == st.size {
			continue
		}
		f, err := os.Open(path)
		if err != nil {
			l.markResync(d, fmt.Sprintf("%s: %v", reasonReadBack, err))
			continue
		}
		if size != st.size {
			d.Resized(st.size, f)
		}
		for _, in := range ins {
			end := st.size
			if in.n >= 0 {
				end = min(in.off+in.n, st.size)
			}
			if in.off < end {
				d.Changed(in.off, end-in.off, f)
				l.recovered.Reread += end - in.off
			}
		}
		f.Close()
	}
}

// changedWhileDown says why the file of disk id, found as st (ok: found),
// was changed while drfs was down, or "": its ctime is later than the
// newest one the mount explained, or, when it had changes in flight, than
// the crash.
func (cs crashState) changedWhileDown(id uint32, st fileState, ok bool, ins []intent) string {
	if !ok {
		return reasonOutside + " while drfs was down: the file is missing"
	}
	var allowed int64
	if id < tableDisks {
		allowed = cs.vouched[id]
	}
	if allowed == 0 {
		return reasonDirty + " (the in-flight table has no record of the disk)"
	}
	if len(ins) > 0 {
		allowed = max(allowed, cs.crashBound(ins))
	}
	if st.ctime > allowed {
		return fmt.Sprintf("%s while drfs was down: inode changed %s (ctime), after the mount's last change at %s",
			reasonOutside, stamp(st.ctime), stamp(allowed))
	}
	return ""
}

// heartbeat stores the in-flight table's heartbeat every beatPeriod until
// Close.
func (l *Log) heartbeat() {
	tick := time.NewTicker(beatPeriod)
	defer tick.Stop()
	for {
		select {
		case <-l.stopBeat:
			return
		case <-tick.C:
			l.inflight.beat()
		}
	}
}

// readInFlight reads the in-flight table of the state directory dir as the
// last process left it, for a read-only Open.
func readInFlight(dir string) crashState {
	b, err := os.ReadFile(filepath.Join(dir, tableName))
	if err != nil {
		return crashState{}
	}
	return readCrashState(b, bootID())
}

// zeroRanges writes zeros over ranges of f.
func zeroRanges(f vfs.File, ranges [][2]int64) error {
	var zeros []byte
	for _, r := range ranges {
		for off := r[0]; off < r[1]; {
			n := min(r[1]-off, 1<<20)
			if int64(len(zeros)) < n {
				zeros = make([]byte, n)
			}
			if _, err := f.WriteAt(zeros[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	return nil
}
