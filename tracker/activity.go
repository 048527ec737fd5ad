package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/zeebo/xxh3"
)

// The activity log bounds what a crash of the host can have lost. After a
// power loss the page cache is gone: a disk's file may lack writes it
// acknowledged without a flush, and the change log may lack the records of
// writes that did reach the file. Both can only be writes made since the
// last time the file and the log were both synced. The activity log names,
// durably, a superset of the places those writes can be: the *hot*
// extents (fixed-size pieces of the disks, 4 MiB by default). An extent is
// made hot, and the activity log synced, before the first change of it
// reaches the disk's file; it cools once the file and the log were synced
// after its last change ended. After a host crash only the hot extents are
// compared with the replica, not whole disks (DRBD's activity log is the
// model).
//
// The file holds two copies of the table, written in turn, each with its
// own sequence number and checksum: a commit torn by the crash leaves the
// other copy whole, and the newest whole copy is read. A copy is a
// 64-byte header and the hot extents, 16 bytes each; docs/log-format.md
// gives the layout.
const (
	activityName    = "activity"
	activityMagic   = "drfsactv"
	activityVersion = 1
	// DefaultActivityExtent is the size of an extent of the activity log.
	DefaultActivityExtent = 4 << 20
	// DefaultActivitySlots is how many extents may be hot at once.
	DefaultActivitySlots = 1024

	activityHeader = 64
	activityEntry  = 16
	// wholeDisk is the extent number that stands for the whole disk: a
	// change that spans more than a quarter of the slots (a discard of a
	// whole disk, a truncation far past its end) makes the disk hot
	// whole.
	wholeDisk = ^uint64(0)
	// activityPins bounds the changes in flight at once, as tableSlots.
	activityPins = 1024
	// coolEvery is how often the log and the files of the hot disks are
	// synced so that their extents can cool (sooner when the table is half
	// full).
	coolEvery = 5 * time.Second
	// aheadExtents is how many extents past its own a change of a
	// sequential writer (seqExtents) makes hot when the one half way there
	// is not: in a commit it does not wait for, one every aheadExtents/2
	// extents, never past the end of the disk unless the change grows it.
	// The writer then finds its next extents durable already: a commit
	// waits for a flush of the device, which takes up to 0.7 s here while
	// the kernel writes a disk's file back, when the writer moves 1 GB/s
	// (docs/benchmarks.md).
	aheadExtents = 128
)

// extentKey is an extent of a disk.
type extentKey struct {
	disk uint32
	ext  uint64
}

// hotExtent is an extent in the table.
type hotExtent struct {
	pins int    // changes of it in flight
	last uint64 // activity.clock when its last change ended
	seq  uint64 // the table's version that added it: durable from then on
}

// pin is the range of extents of a change in flight.
type pin struct {
	disk        uint32
	first, last uint64
}

// activity is the activity log of an open log. begin and end are safe for
// concurrent use.
type activity struct {
	fs       vfs.FS
	path     string
	shift    uint // log2 of the extent size
	slots    int
	ahead    uint64 // aheadExtents, at most an eighth of the slots
	copySize int64

	// commitMu serializes writes of the file.
	commitMu sync.Mutex
	f        vfs.File

	mu struct {
		sync.Mutex
		cond sync.Cond
		hot  map[extentKey]*hotExtent
		// clock counts the ends of changes; settled is its value when
		// the last sync of the disks and the log began (every change
		// ended by then is durable), ticked when the cooler last
		// looked: an extent last changed before ticked was not changed
		// for a whole cooling period.
		clock, settled, ticked uint64
		// seq counts the changes of the table in memory, durable the
		// last one written and synced; committing: a commit is being
		// written.
		seq, durable uint64
		committing   bool
		// broken: a commit failed, so the file no longer covers new
		// extents.
		broken error
		pins   [activityPins + 1]pin // by pin token; 0 is no pin
		// streams tell sequential writers, per disk: the last extent
		// a change began in, and how many extent boundaries in a row
		// the changes crossed forward by one.
		streams map[uint32]stream
	}
	freePins chan uint32
	// wake asks the cooler for a cooling sync now: the table is half full.
	wake chan struct{}
}

// stream is the recent path of the changes of a disk: the furthest end of
// a run of changes that each began near the end of the ones before, and
// how far the run moved that end forward.
type stream struct {
	end, run int64
}

// seqExtents is how far forward a run of changes must move, each
// beginning near where the ones before ended, for their disk's writer to
// be taken as sequential (a guest's short bursts of contiguous writes are
// not, nor a random writer: only the changes past the end move it).
const seqExtents = 2

// seqNear is how far from the end of its run a change may begin and still
// continue it: the kernel splits a large write into requests of at most
// 1 MiB and sends them at once, and they reach begin in any order.
const seqNear = 1 << 20

// sequentialLocked records a change of disk's [off, off+n) and reports
// whether the disk's writer is sequential.
func (a *activity) sequentialLocked(disk uint32, off, n int64) bool {
	s := a.mu.streams[disk]
	if off < s.end-seqNear || off > s.end+seqNear {
		s = stream{end: off}
	}
	if end := off + n; end > s.end {
		s.run += end - s.end
		s.end = end
	}
	a.mu.streams[disk] = s
	return s.run >= seqExtents<<a.shift
}

// activityState is what the activity log of the previous process holds.
type activityState struct {
	valid bool
	seq   uint64
	// ranges are the hot byte ranges of each disk, in order, merged,
	// made of count extents; whole the disks hot whole.
	ranges map[uint32][]Extent
	count  map[uint32]int
	whole  map[uint32]bool
	extent int64 // the extent size
}

// Extent is a byte range of a disk.
type Extent struct{ Off, Len int64 }

// readActivity reads the activity log at path, as the last process left
// it: its newest whole copy. A copy is written only after the one before
// was synced, and a change waits for the copy that names its extents: a
// newer copy torn by the crash was needed by no change made yet, and a
// whole one holds every extent still hot (those it leaves out had cooled).
func readActivity(fs vfs.FS, path string) activityState {
	st := activityState{ranges: map[uint32][]Extent{}, count: map[uint32]int{}, whole: map[uint32]bool{}}
	f, err := fs.Open(path)
	if err != nil {
		return st
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil || info.Size() < 2*activityHeader {
		return st
	}
	b := make([]byte, info.Size())
	if _, err := f.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return st
	}
	half := int64(len(b) / 2)
	var entries []extentKey
	for c := int64(0); c < 2; c++ {
		seq, extSize, es, ok := decodeActivityCopy(b[c*half : (c+1)*half])
		if ok && (!st.valid || seq > st.seq) {
			st.valid, st.seq, st.extent, entries = true, seq, extSize, es
		}
	}
	for _, k := range entries {
		if k.ext == wholeDisk {
			st.whole[k.disk] = true
			continue
		}
		st.ranges[k.disk] = append(st.ranges[k.disk], Extent{int64(k.ext) * st.extent, st.extent})
		st.count[k.disk]++
	}
	for d, rs := range st.ranges {
		st.ranges[d] = mergeExtents(rs)
	}
	return st
}

// decodeActivityCopy decodes one copy of the table.
func decodeActivityCopy(b []byte) (seq uint64, extSize int64, entries []extentKey, ok bool) {
	if len(b) < activityHeader || string(b[:8]) != activityMagic || binary.BigEndian.Uint32(b[8:]) != activityVersion {
		return 0, 0, nil, false
	}
	n := int(binary.BigEndian.Uint32(b[12:]))
	seq = binary.BigEndian.Uint64(b[16:])
	extSize = int64(binary.BigEndian.Uint64(b[24:]))
	end := activityHeader + n*activityEntry
	if n < 0 || end > len(b) || extSize <= 0 || extSize&(extSize-1) != 0 {
		return 0, 0, nil, false
	}
	h := xxh3.New()
	h.Write(b[:56])
	h.Write(b[activityHeader:end])
	if h.Sum64() != binary.BigEndian.Uint64(b[56:]) {
		return 0, 0, nil, false
	}
	for i := activityHeader; i < end; i += activityEntry {
		entries = append(entries, extentKey{binary.BigEndian.Uint32(b[i:]), binary.BigEndian.Uint64(b[i+8:])})
	}
	return seq, extSize, entries, true
}

// mergeExtents sorts rs and merges the ranges that touch.
func mergeExtents(rs []Extent) []Extent {
	slices.SortFunc(rs, func(a, b Extent) int { return int(min(max(a.Off-b.Off, -1), 1)) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && r.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Len, r.Off+r.Len-out[n-1].Off)
			continue
		}
		out = append(out, r)
	}
	return out
}

// openActivity creates (or empties) the activity log at path: both copies
// empty, synced.
func openActivity(fs vfs.FS, path string, extent int64, slots int) (*activity, error) {
	a := &activity{fs: fs, path: path, slots: slots, ahead: uint64(max(1, min(aheadExtents, slots/8))),
		freePins: make(chan uint32, activityPins), wake: make(chan struct{}, 1)}
	for extent > 1<<a.shift {
		a.shift++
	}
	a.copySize = (activityHeader + int64(slots)*activityEntry + 4095) / 4096 * 4096
	a.mu.cond.L = &a.mu
	a.mu.hot = make(map[extentKey]*hotExtent)
	a.mu.streams = make(map[uint32]stream)
	for i := uint32(1); i <= activityPins; i++ {
		a.freePins <- i
	}
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("tracker: creating the activity log %s: %w", path, err)
	}
	a.f = f
	a.mu.seq, a.mu.durable = 2, 2
	for _, s := range []uint64{1, 2} {
		if _, err := f.WriteAt(a.encode(s, nil), int64(s&1)*a.copySize); err != nil {
			f.Close()
			return nil, fmt.Errorf("tracker: writing the activity log %s: %w", path, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("tracker: syncing the activity log %s: %w", path, err)
	}
	return a, nil
}

// encode returns copy seq of the table with entries, padded to copySize.
func (a *activity) encode(seq uint64, entries []extentKey) []byte {
	b := make([]byte, a.copySize)
	copy(b, activityMagic)
	binary.BigEndian.PutUint32(b[8:], activityVersion)
	binary.BigEndian.PutUint32(b[12:], uint32(len(entries)))
	binary.BigEndian.PutUint64(b[16:], seq)
	binary.BigEndian.PutUint64(b[24:], 1<<a.shift)
	i := activityHeader
	for _, k := range entries {
		binary.BigEndian.PutUint32(b[i:], k.disk)
		binary.BigEndian.PutUint64(b[i+8:], k.ext)
		i += activityEntry
	}
	h := xxh3.New()
	h.Write(b[:56])
	h.Write(b[activityHeader:i])
	binary.BigEndian.PutUint64(b[56:], h.Sum64())
	return b
}

// extents returns the extents of a change of [off, off+n) (n < 0: of the
// size, at off).
func (a *activity) extents(off, n int64) (first, last uint64) {
	if off < 0 {
		off = 0
	}
	first = uint64(off) >> a.shift
	last = first
	if n > 0 {
		last = uint64(off+n-1) >> a.shift
	}
	if last-first >= uint64(a.slots/4) {
		return wholeDisk, wholeDisk
	}
	return first, last
}

// begin makes the extents of a change of disk's [off, off+n) hot, durably,
// and pins them until end; it returns the pin's token. size is the disk's
// size before the change. It waits for a commit of the table when an
// extent is not in it yet, and for cooling when the table is full (settle
// syncs the files and the log). lost is called, and begin returns without
// waiting, when the table cannot be written: the change is then not
// covered.
func (a *activity) begin(disk uint32, off, n, size int64, settle func() error, lost func(error)) uint32 {
	first, last := a.extents(off, n)
	tok := <-a.freePins
	p := pin{disk, first, last}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.mu.pins[tok] = p
	seq := first != wholeDisk && n > 0 && a.sequentialLocked(disk, off, n)
	for {
		var added []*hotExtent
		need := uint64(0)
		for e := first; ; e++ {
			k := extentKey{disk, e}
			h := a.mu.hot[k]
			if h == nil {
				h = &hotExtent{}
				a.mu.hot[k] = h
			}
			if h.seq == 0 {
				// Not committed yet (new, or made hot ahead by a
				// begin that then waited for cooling).
				added = append(added, h)
			}
			h.pins++
			need = max(need, h.seq)
			if e == last {
				break
			}
		}
		ahead := 0
		stop := last + a.ahead
		if off+n <= size {
			stop = min(stop, uint64(size-1)>>a.shift)
		}
		if mid := min(last+a.ahead/2, stop); seq && mid > last && a.mu.hot[extentKey{disk, mid}] == nil {
			// A sequential writer: the next extents are made hot,
			// unpinned, in this commit or one of their own.
			for e := last + 1; e <= stop; e++ {
				if k := (extentKey{disk, e}); a.mu.hot[k] == nil {
					h := &hotExtent{}
					a.mu.hot[k] = h
					added = append(added, h)
					ahead++
				}
			}
		}
		if len(added) > 0 && len(a.mu.hot) > a.slots {
			a.coolLocked(a.mu.settled)
		}
		if len(a.mu.hot) > a.slots/2 {
			select {
			case a.wake <- struct{}{}:
			default:
			}
		}
		if len(a.mu.hot) > a.slots {
			// Full of extents that have not cooled yet: unpin, sync so
			// that they cool, and try again.
			a.unpinLocked(p, false)
			a.mu.Unlock()
			err := settle()
			a.mu.Lock()
			if err != nil && a.mu.broken == nil {
				a.mu.broken = fmt.Errorf("the activity log is full and syncing the disks failed: %w", err)
			}
			if a.mu.broken == nil {
				continue
			}
			// Go on uncovered (lost below).
			for e := first; ; e++ {
				k := extentKey{disk, e}
				if a.mu.hot[k] == nil {
					a.mu.hot[k] = &hotExtent{seq: ^uint64(0)}
				}
				a.mu.hot[k].pins++
				if e == last {
					break
				}
			}
			need = ^uint64(0)
		} else if len(added) > 0 {
			a.mu.seq++
			for _, h := range added {
				h.seq = a.mu.seq
			}
			need = a.mu.seq
		}
		if need > a.mu.durable && len(added) > ahead {
			// An extent of this change is new: wait for its commit.
			if err := a.commitLocked(need); err != nil {
				a.mu.Unlock()
				lost(err)
				a.mu.Lock()
			}
			return tok
		}
		if len(added) > 0 && !a.mu.committing {
			// Only extents ahead are new: commit them meanwhile.
			go func() {
				a.mu.Lock()
				defer a.mu.Unlock()
				a.commitLocked(a.mu.seq)
			}()
		}
		if need > a.mu.durable {
			// An extent of this change was added by another change
			// and is not durable yet.
			if err := a.commitLocked(need); err != nil {
				a.mu.Unlock()
				lost(err)
				a.mu.Lock()
			}
		}
		return tok
	}
}

// end unpins the extents of a token from begin.
func (a *activity) end(tok uint32) {
	a.mu.Lock()
	p := a.mu.pins[tok]
	a.unpinLocked(p, true)
	a.mu.Unlock()
	a.freePins <- tok
}

// unpinLocked drops a pin of p's extents; ended: the change was made (its
// extents' last change moves on), rather than abandoned before it began.
func (a *activity) unpinLocked(p pin, ended bool) {
	if ended {
		a.mu.clock++
	}
	for e := p.first; ; e++ {
		if h := a.mu.hot[extentKey{p.disk, e}]; h != nil {
			h.pins--
			if ended {
				h.last = a.mu.clock
			} else if h.pins == 0 && h.last == 0 && h.seq == 0 {
				// Added by this begin and never written: not hot.
				delete(a.mu.hot, extentKey{p.disk, e})
			}
		}
		if e == p.last {
			break
		}
	}
}

// commitLocked waits until version seq of the table (or a later one) is
// durable, writing it if no commit is under way. a.mu is held; it is
// released while writing.
func (a *activity) commitLocked(seq uint64) error {
	for a.mu.durable < seq {
		if a.mu.broken != nil {
			return a.mu.broken
		}
		if a.mu.committing {
			a.mu.cond.Wait()
			continue
		}
		a.mu.committing = true
		s := a.mu.seq
		entries := make([]extentKey, 0, len(a.mu.hot))
		for k := range a.mu.hot {
			entries = append(entries, k)
		}
		a.mu.Unlock()
		err := a.write(s, entries)
		a.mu.Lock()
		a.mu.committing = false
		if err != nil {
			a.mu.broken = fmt.Errorf("writing the activity log: %w", err)
		} else {
			a.mu.durable = max(a.mu.durable, s)
		}
		a.mu.cond.Broadcast()
	}
	return nil
}

// write writes copy seq of the table and syncs it.
func (a *activity) write(seq uint64, entries []extentKey) error {
	slices.SortFunc(entries, func(x, y extentKey) int {
		if x.disk != y.disk {
			return int(int64(x.disk) - int64(y.disk))
		}
		return int(min(max(int64(x.ext-y.ext), -1), 1)) // wholeDisk sorts last
	})
	a.commitMu.Lock()
	defer a.commitMu.Unlock()
	if _, err := a.f.WriteAt(a.encode(seq, entries), int64(seq&1)*a.copySize); err != nil {
		return err
	}
	// The file's size never changes after openActivity: its data is all
	// there is to sync.
	return a.f.SyncData()
}

// coolLocked drops from the table in memory the extents that cooled: not
// in flight, and last changed before bound (at most settled: the last
// cooling sync began after their last change ended).
func (a *activity) coolLocked(bound uint64) int {
	n := 0
	for k, h := range a.mu.hot {
		if h.pins == 0 && h.last <= bound {
			delete(a.mu.hot, k)
			n++
		}
	}
	if n > 0 {
		a.mu.seq++
	}
	return n
}

// settling starts a sync of the disks and the log: it returns the disks
// with extents changed since the last one (or in flight), and the clock to
// pass to settledAt.
func (a *activity) settling() (map[uint32]bool, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	disks := map[uint32]bool{}
	for k, h := range a.mu.hot {
		if h.last > a.mu.settled || h.pins > 0 {
			disks[k.disk] = true
		}
	}
	return disks, a.mu.clock
}

// settledAt records that every change ended by clock is durable in the
// disks' files and the log, except those of failed disks, whose extents
// stay hot.
func (a *activity) settledAt(clock uint64, failed map[uint32]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(failed) > 0 {
		// Their extents stay hot: touch them past clock.
		a.mu.clock++
		for k, h := range a.mu.hot {
			if failed[k.disk] {
				h.last = a.mu.clock
			}
		}
	}
	a.mu.settled = max(a.mu.settled, clock)
}

// tick starts a cooling period. It returns the bound of the period that
// ended (an extent last changed by it was idle for the whole period) and
// whether one of the idle extents needs a sync before it can cool: it
// changed since the last one. An extent written all the time is never
// idle, so a sequential writer that sweeps a disk faster than a period,
// or a random one all over it, costs no sync and no commit.
func (a *activity) tick() (bound uint64, sync bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	bound, a.mu.ticked = a.mu.ticked, a.mu.clock
	for _, h := range a.mu.hot {
		if h.pins == 0 && h.last > a.mu.settled && h.last <= bound {
			return bound, true
		}
	}
	return bound, false
}

// lastSettled returns the clock of the last sync of the disks and the log.
func (a *activity) lastSettled() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.mu.settled
}

// cool writes the table without the extents that were not in flight and
// last changed by bound, among those a sync covered. Lazily: an extent
// leaves the table only after a whole period without changes, so that one
// written all the time does not cost a commit each period; a full table
// cools all it can (begin).
func (a *activity) cool(bound uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.coolLocked(min(bound, a.mu.settled)) == 0 || a.mu.broken != nil {
		return nil
	}
	return a.commitLocked(a.mu.seq)
}

// hotCount returns how many extents are in the table.
func (a *activity) hotCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.mu.hot)
}

// close closes the file.
func (a *activity) close() error {
	a.commitMu.Lock()
	defer a.commitMu.Unlock()
	return a.f.Close()
}
