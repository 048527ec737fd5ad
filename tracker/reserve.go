package tracker

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The reserve. A state directory whose file system fills up must not stop
// the log from rotating, freezing and dropping generations (which give the
// space back), nor the index (Pebble's WAL) and the agent's state file
// from being written. So the log keeps a file of unused space, STATE/reserve,
// of min(64 MiB, a tenth of the file system). When a write runs out of
// space (ENOSPC), the reserve is removed, which gives that room to the
// rest, and the state directory is full: every disk that changes from then
// on is flagged for resynchronization instead of logged (its records would
// only fill the space again), until a dropped generation gave enough space
// back to create the reserve again.

const (
	reserveName = "reserve"
	maxReserve  = 64 << 20
	// reasonFull is the reason of a disk changed while the state
	// directory was full.
	reasonFull = reasonWrite + ": state directory full"
)

// errIndexFull is the cause of a full state directory found by a write of
// the index (Pebble), which is retried once the reserve is released.
var errIndexFull = errors.New("writing the index: no space left on device")

// SpaceStatus says whether the state directory ran out of space.
type SpaceStatus struct {
	// Full: a write of the log ran out of space and the reserve was
	// released; disks changed meanwhile are flagged, not logged. It clears
	// once the reserve could be created again.
	Full  bool      `json:"full"`
	Since time.Time `json:"since,omitzero"`
	Error string    `json:"error,omitempty"` // the write that failed
	// Reserve is the size of the reserve file the log keeps (0: none).
	Reserve int64 `json:"reserve"`
	// Held: the reserve file is in place.
	Held bool `json:"held"`
}

// FullReason says why a full state directory makes health Critical.
func (sp SpaceStatus) FullReason() string {
	return fmt.Sprintf("state directory full since %s (%s): disks changed meanwhile are flagged for resynchronization; space comes back as generations are shipped",
		sp.Since.Local().Format(time.TimeOnly), sp.Error)
}

// IsNoSpace reports whether err says a file system is full.
func IsNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// Space returns the state directory's space condition.
func (l *Log) Space() SpaceStatus {
	l.space.Lock()
	defer l.space.Unlock()
	return SpaceStatus{Full: l.full.Load(), Since: l.space.since, Error: l.space.err, Reserve: l.space.size, Held: l.space.held}
}

func (l *Log) reservePath() string { return l.fs.PathJoin(l.opts.Dir, reserveName) }

// reserveSize is the reserve's size for the state directory's file system:
// opts.Reserve if set, otherwise min(64 MiB, a tenth of the file system);
// 0 (no reserve) when the file system does not say its size.
func (l *Log) reserveSize() int64 {
	if l.opts.Reserve != 0 {
		return max(l.opts.Reserve, 0)
	}
	du, err := l.fs.GetDiskUsage(l.opts.Dir)
	if err != nil || du.TotalBytes == 0 {
		return 0
	}
	return min(maxReserve, int64(du.TotalBytes/10)) &^ 4095
}

// openReserve takes the reserve at Open: it keeps the file there, or
// creates it; if there is no room for it, the state directory is full.
func (l *Log) openReserve() {
	size := l.reserveSize()
	l.space.Lock()
	l.space.size = size
	l.space.Unlock()
	if size == 0 {
		_ = l.fs.Remove(l.reservePath())
		return
	}
	if st, err := l.fs.Stat(l.reservePath()); err == nil && st.Size() == size {
		l.space.Lock()
		l.space.held = true
		l.space.Unlock()
		return
	}
	_ = l.fs.Remove(l.reservePath())
	if !l.restoreReserve() {
		l.noteFull(fmt.Errorf("no room for the reserve of %d bytes in %s", size, l.opts.Dir))
	}
}

// NoteFull tells the log that a write into its state directory by
// someone else (the agent's state file) ran out of space with err: the
// state directory is full. It releases the reserve and reports whether it
// did, in which case the write may be retried.
func (l *Log) NoteFull(err error) bool {
	if l.opts.ReadOnly || !IsNoSpace(err) {
		return false
	}
	return l.noteFull(err)
}

// noteFull records that the state directory is full because of err, and
// releases the reserve; it reports whether there was one.
func (l *Log) noteFull(err error) bool {
	l.space.Lock()
	defer l.space.Unlock()
	if !l.full.Load() {
		l.space.since, l.space.err = l.now(), err.Error()
		l.full.Store(true)
	}
	if !l.space.held {
		return false
	}
	_ = l.fs.Remove(l.reservePath())
	l.space.held = false
	return true
}

// checkSpace notes a full state directory if err says so, and returns err.
func (l *Log) checkSpace(err error) error {
	if err != nil && IsNoSpace(err) {
		l.noteFull(err)
	}
	return err
}

// restoreReserve creates the reserve again if it is missing and there is
// room for it and as much again, and then clears the full condition. It
// reports whether the reserve is in place (or none is kept).
func (l *Log) restoreReserve() bool {
	if l.opts.ReadOnly {
		return true
	}
	l.space.Lock()
	defer l.space.Unlock()
	if l.space.held && !l.full.Load() {
		return true
	}
	size := l.space.size
	if size > 0 && !l.space.held {
		du, err := l.fs.GetDiskUsage(l.opts.Dir)
		if err != nil || int64(du.AvailBytes) < 2*size {
			return false
		}
		if err := createReserve(l.fs, l.reservePath(), size); err != nil {
			_ = l.fs.Remove(l.reservePath())
			return false
		}
		l.space.held = true
	}
	l.full.Store(false)
	l.space.since, l.space.err = time.Time{}, ""
	return true
}

// openSlack is the room opening the index takes beyond the table it
// writes from its WAL files: the manifest's edits and a margin.
const openSlack = 1 << 20

// roomToOpen checks, before the index is opened, that the state directory
// has the room that opening it takes: Pebble writes the memtables it
// replays from its WAL files into a table, and, on a full file system,
// retries that write without end instead of failing. It releases the
// reserve if that makes the room (released is then true: the log starts
// full); otherwise it returns an error that says how much room is needed.
func roomToOpen(fs vfs.FS, dir string) (released bool, err error) {
	du, err := fs.GetDiskUsage(dir)
	if err != nil || du.TotalBytes == 0 {
		return false, nil // the file system does not say: try
	}
	var wal int64
	index := fs.PathJoin(dir, "index")
	names, _ := fs.List(index)
	for _, n := range names {
		if strings.HasSuffix(n, ".log") {
			if st, err := fs.Stat(fs.PathJoin(index, n)); err == nil {
				wal += st.Size()
			}
		}
	}
	if wal == 0 {
		return false, nil // nothing to replay
	}
	need := wal + openSlack
	avail := int64(du.AvailBytes)
	if avail >= need {
		return false, nil
	}
	reserve := fs.PathJoin(dir, reserveName)
	if st, err := fs.Stat(reserve); err == nil && avail+st.Size() >= need {
		if err := fs.Remove(reserve); err == nil {
			return true, nil
		}
	}
	return false, &openError{syscall.ENOSPC, fmt.Sprintf(
		"tracker: state directory %s is full: %d MiB free, and opening its change log needs about %d MiB: give it more room (or remove what else fills its file system), then start again",
		dir, avail>>20, (need+(1<<20)-1)>>20)}
}

// createReserve writes a file of size bytes whose blocks are allocated.
func createReserve(fs vfs.FS, path string, size int64) error {
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return err
	}
	err = allocate(f, size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// allocate gives f size bytes of allocated blocks: fallocate where the file
// system has it, written zeros otherwise.
func allocate(f vfs.File, size int64) error {
	if fd := f.Fd(); fd != vfs.InvalidFd {
		if err := fallocate(fd, size); err == nil {
			return nil
		} else if IsNoSpace(err) {
			return err
		}
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return nil
}
