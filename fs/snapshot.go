package fs

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/zero"
)

// Extent is the byte range [Off, Off+Len) of a disk.
type Extent struct{ Off, Len int64 }

// ErrSnapshotDeleted is returned by the views of a deleted snapshot.
var ErrSnapshotDeleted = errors.New("snapshot deleted")

// defaultSnapshotBlockShift is log2 of the copy-on-write granularity of a
// disk that is not open when the snapshot is taken (4 KiB). A disk open
// then uses the block size of its DiskRecorder.
const defaultSnapshotBlockShift = 12

// Snapshot is a point-in-time image of some disks of the mount, kept by
// copy-on-write: from the moment it is taken until Delete, before a change
// through the mount overwrites, punches, zeroes, truncates away, copies
// onto or shifts a block of one of its disks for the first time, the block's
// content at the snapshot (its before-image) is saved into a sparse file
// per disk in the snapshot's directory. A View reads a disk as it was.
//
// Take it while the mount is quiesced (Server.Quiesce) to have one cut
// across all its disks; without a hold, each disk is cut at its own moment
// between the changes in flight.
//
// Blocks are the DiskRecorder's blocks of a disk that is open when the
// snapshot is taken, else 4 KiB (a disk opened later then locks blocks of
// at least 4 KiB). The index of saved blocks is kept in memory (a
// bitmap, allocated by 128 MiB regions of the disk as they are touched).
//
// A snapshot follows the backing file (device and inode), through renames
// and unlinks. It sees only changes made through this mount: a change
// made to the source directory behind its back is not preserved, nor is a
// change to a file the Recorder does not track (the snapshot of such a disk
// fails, see View).
//
// Crash and restart: a snapshot lives in the memory of the mount. It does
// not survive the mount (an unmount, a crash, a restart of the agent): its
// files stay in the directory, without the index that gives them meaning,
// and the caller removes them and takes a new snapshot. It is never needed
// for durability: the change log is.
//
// If saving a before-image fails (the snapshot's file system is full, say),
// the workload's change still succeeds, the snapshot stops saving, and its
// views return the error from then on: the caller takes a new one.
//
// Its methods are safe for concurrent use, with each other and with the
// mount's writes.
type Snapshot struct {
	m     *mount
	dir   string
	disks []*diskSnap // in the order given to Server.Snapshot

	mu struct {
		sync.Mutex
		deleted bool
	}
}

// diskSnap is the snapshot of one disk.
type diskSnap struct {
	rel       string // as given to Server.Snapshot
	key       fileKey
	size      int64 // at the snapshot
	shift     uint  // log2 of the block size
	storePath string
	// live and store are the backing file (opened read-only when the
	// snapshot was taken) and the file of saved before-images, which
	// holds block b at offset b<<shift. Views use the *os.File, which
	// turns a use after Delete into an error; the write path uses the raw
	// descriptors, which it only does while the snapshot is installed on
	// the disk (Delete uninstalls it with the whole file locked first).
	live, store     *os.File
	liveFd, storeFd int
	saved           bitmap

	// failed is set (before the change that could not be preserved goes
	// on) once a before-image could not be saved; err says why.
	failed  atomic.Bool
	errOnce sync.Once
	err     error
	deleted atomic.Bool
}

// Snapshot starts a snapshot of disks (paths relative to the source
// directory, slash separated, as the Recorder sees them) whose before-images
// go to new files in dir (created if missing; one file per disk, named
// after its escaped path with ".before" appended). It fails, having changed
// nothing, when a disk is missing, not a regular file, not tracked, named
// twice (or twice through hard links), or already in another snapshot of
// the mount, when a file of the same name is already in dir, or when the
// mount is untracked or closed.
//
// Call it while Quiesce holds the disks' writes, so that the cut is one
// instant for all of them. It waits for the changes in flight on each disk
// that is open.
func (s *Server) Snapshot(disks []string, dir string) (*Snapshot, error) {
	m := s.m
	if m.rec == nil {
		return nil, errors.New("snapshot: the mount tracks no disk")
	}
	if len(disks) == 0 {
		return nil, errors.New("snapshot: no disk given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	snap := &Snapshot{m: m, dir: dir}
	ok := false
	defer func() {
		if !ok {
			snap.closeFiles()
		}
	}()
	seen := make(map[string]bool)
	for _, rel := range disks {
		ds, err := openDiskSnap(m, rel, dir, seen)
		if err != nil {
			return nil, fmt.Errorf("snapshot: %w", err)
		}
		snap.disks = append(snap.disks, ds)
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed || m.mu.unmounting > 0 {
		return nil, ErrClosed
	}
	keys := make(map[fileKey]string)
	for _, ds := range snap.disks {
		if other, dup := keys[ds.key]; dup {
			return nil, fmt.Errorf("snapshot: %s and %s are the same file", other, ds.rel)
		}
		keys[ds.key] = ds.rel
		if m.mu.snaps[ds.key] != nil {
			return nil, fmt.Errorf("snapshot: %s is already in a snapshot: delete it first", ds.rel)
		}
		if m.mu.untracked[ds.key] > 0 {
			return nil, fmt.Errorf("snapshot: %s is not a tracked disk", ds.rel)
		}
	}
	for _, ds := range snap.disks {
		if err := ds.startLocked(m); err != nil {
			// Undo the disks already started.
			for _, done := range snap.disks {
				if done == ds {
					break
				}
				m.stopLocked(done)
			}
			return nil, fmt.Errorf("snapshot: %s: %w", ds.rel, err)
		}
	}
	ok = true
	return snap, nil
}

// openDiskSnap opens the backing file of rel and creates its file of
// before-images in dir.
func openDiskSnap(m *mount, rel, dir string, seen map[string]bool) (*diskSnap, error) {
	clean := path.Clean(rel)
	if !filepath.IsLocal(clean) || clean == "." {
		return nil, fmt.Errorf("disk %q: not a path inside the source directory", rel)
	}
	if seen[clean] {
		return nil, fmt.Errorf("disk %s: named twice", clean)
	}
	seen[clean] = true
	fd, err := m.openat(clean, unix.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", clean, err)
	}
	live := os.NewFile(uintptr(fd), clean)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		live.Close()
		return nil, fmt.Errorf("disk %s: %w", clean, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		live.Close()
		return nil, fmt.Errorf("disk %s: not a regular file", clean)
	}
	storePath := filepath.Join(dir, url.PathEscape(clean)+".before")
	store, err := os.OpenFile(storePath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		live.Close()
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("disk %s: %s exists (left by an earlier snapshot?): remove it or use another directory", clean, storePath)
		}
		return nil, fmt.Errorf("disk %s: %w", clean, err)
	}
	return &diskSnap{
		rel:       clean,
		key:       fileKey{dev: uint64(st.Dev), ino: st.Ino},
		storePath: storePath,
		live:      live,
		store:     store,
		liveFd:    int(live.Fd()),
		storeFd:   int(store.Fd()),
	}, nil
}

// startLocked cuts the disk: with every open disk of its file locked
// whole (no change in flight), it takes the size and installs itself on
// them; disks opened later find it in the mount. m.mu is held.
func (ds *diskSnap) startLocked(m *mount) error {
	var open []*disk
	ds.shift = 63
	for d := range m.mu.disks {
		if d.key == ds.key {
			open = append(open, d)
			ds.shift = min(ds.shift, d.lock.shift)
		}
	}
	if len(open) == 0 {
		ds.shift = defaultSnapshotBlockShift
	}
	for _, d := range open {
		d.lock.lockFile()
	}
	defer func() {
		for _, d := range open {
			d.lock.unlockFile()
		}
	}()
	var st unix.Stat_t
	if err := unix.Fstat(ds.liveFd, &st); err != nil {
		return err
	}
	ds.size = st.Size
	if err := ds.store.Truncate(ds.size); err != nil {
		return err
	}
	ds.saved = newBitmap((ds.size + 1<<ds.shift - 1) >> ds.shift)
	for _, d := range open {
		d.snap.Store(ds)
	}
	m.mu.snaps[ds.key] = ds
	return nil
}

// stopLocked uninstalls ds from the mount: from its return no change calls
// ds.preserve. m.mu is held.
func (m *mount) stopLocked(ds *diskSnap) {
	if m.mu.snaps[ds.key] == ds {
		delete(m.mu.snaps, ds.key)
	}
	for d := range m.mu.disks {
		if d.snap.Load() == ds {
			d.lock.lockFile()
			d.snap.Store(nil)
			d.lock.unlockFile()
		}
	}
}

// untracked notes that the file key at rel was opened and is not a tracked
// disk: a snapshot of it cannot be kept.
func (m *mount) untracked(key fileKey, rel string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.closed {
		return
	}
	m.mu.untracked[key]++
	if ds := m.mu.snaps[key]; ds != nil {
		ds.fail(fmt.Errorf("%s is not a tracked disk: its changes are not preserved", rel))
	}
}

// forgetUntracked undoes untracked when the kernel forgets the inode.
func (m *mount) forgetUntracked(key fileKey) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.untracked[key]--; m.mu.untracked[key] <= 0 {
		delete(m.mu.untracked, key)
	}
}

// Dir returns the directory of the snapshot's files.
func (s *Snapshot) Dir() string { return s.dir }

// Disks returns the paths of the snapshot's disks, cleaned, in the order
// given to Server.Snapshot.
func (s *Snapshot) Disks() []string {
	out := make([]string, len(s.disks))
	for i, ds := range s.disks {
		out[i] = ds.rel
	}
	return out
}

// View returns the disk at rel as it was when the snapshot was taken.
func (s *Snapshot) View(rel string) (*View, error) {
	clean := path.Clean(rel)
	for _, ds := range s.disks {
		if ds.rel == clean {
			return &View{ds: ds}, nil
		}
	}
	return nil, fmt.Errorf("snapshot: %s is not one of its disks", rel)
}

// Bytes returns the space the before-images take on disk (allocated
// blocks of the snapshot's files), 0 once deleted.
func (s *Snapshot) Bytes() int64 {
	var total int64
	for _, ds := range s.disks {
		if ds.deleted.Load() {
			continue
		}
		if conn, err := ds.store.SyscallConn(); err == nil {
			conn.Control(func(fd uintptr) {
				var st unix.Stat_t
				if unix.Fstat(int(fd), &st) == nil {
					total += st.Blocks * 512
				}
			})
		}
	}
	return total
}

// Err returns why the snapshot stopped saving before-images (the first
// disk that failed), or nil.
func (s *Snapshot) Err() error {
	for _, ds := range s.disks {
		if ds.failed.Load() {
			return fmt.Errorf("snapshot of %s: %w", ds.rel, ds.err)
		}
	}
	return nil
}

// Delete ends the snapshot: changes stop saving before-images (it waits
// for those in progress), its files are removed and its views fail with
// ErrSnapshotDeleted. It may be called after the mount has stopped, and
// more than once.
func (s *Snapshot) Delete() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.deleted {
		return nil
	}
	s.mu.deleted = true
	s.m.mu.Lock()
	for _, ds := range s.disks {
		s.m.stopLocked(ds)
	}
	s.m.mu.Unlock()
	return s.closeFiles()
}

// closeFiles closes and removes the files of the snapshot.
func (s *Snapshot) closeFiles() error {
	var errs []error
	for _, ds := range s.disks {
		ds.deleted.Store(true)
		ds.live.Close()
		ds.store.Close()
		if err := os.Remove(ds.storePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fail stops the snapshot of the disk: its views return err from now on.
func (ds *diskSnap) fail(err error) {
	ds.errOnce.Do(func() {
		ds.err = err
		ds.failed.Store(true)
	})
}

// check returns the error a view of the disk returns, if any.
func (ds *diskSnap) check() error {
	if ds.deleted.Load() {
		return ErrSnapshotDeleted
	}
	if ds.failed.Load() {
		return fmt.Errorf("snapshot of %s failed: %w", ds.rel, ds.err)
	}
	return nil
}

// preserve saves the before-images of the blocks of [off, off+n) (n < 0: to
// the end) that are not saved yet. The caller holds the block lock of the
// range, and changes the range only after preserve has returned: each
// block is saved before its bit is set, and its bit is set before the
// block changes, which is what View.ReadAt relies on.
func (ds *diskSnap) preserve(off, n int64) {
	if ds.failed.Load() {
		return
	}
	end := ds.size
	if n >= 0 && n < end-off {
		end = off + n
	}
	off = max(off, 0)
	if off >= end {
		return
	}
	last := (end-1)>>ds.shift + 1
	for b := off >> ds.shift; b < last; {
		b = ds.saved.next(b, last, false)
		if b == last {
			return
		}
		e := ds.saved.next(b, last, true)
		if err := ds.save(b<<ds.shift, e<<ds.shift); err != nil {
			ds.fail(fmt.Errorf("save before-image of [%d, %d): %w", b<<ds.shift, e<<ds.shift, err))
			return
		}
		ds.saved.setRange(b, e)
		b = e
	}
}

// smallSave is the size up to which a save is a read into a buffer;
// larger ones copy only the data extents of the range.
const smallSave = 256 << 10

var saveBuffers = sync.Pool{New: func() any { b := make([]byte, smallSave); return &b }}

// save copies [lo, hi) of the backing file into the store, leaving holes
// where the backing file has holes or zero blocks.
func (ds *diskSnap) save(lo, hi int64) error {
	if hi-lo <= smallSave {
		return ds.copyBuffered(lo, hi)
	}
	for lo < hi {
		data, err := unix.Seek(ds.liveFd, lo, unix.SEEK_DATA)
		if err == unix.ENXIO || (err == nil && data >= hi) {
			return nil // only holes (or the end of the file) left
		}
		if err != nil {
			return ds.copyBuffered(lo, hi)
		}
		hole, err := unix.Seek(ds.liveFd, data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		hole = min(hole, hi)
		if err := ds.copyRange(data, hole); err != nil {
			return err
		}
		lo = hole
	}
	return nil
}

// copyRange copies [lo, hi) with copy_file_range (which may share extents
// when the store is on the same file system), else through a buffer.
func (ds *diskSnap) copyRange(lo, hi int64) error {
	for lo < hi {
		in, out := lo, lo
		n, err := unix.CopyFileRange(ds.liveFd, &in, ds.storeFd, &out, int(min(hi-lo, maxCopy)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return ds.copyBuffered(lo, hi)
		}
		if n == 0 {
			return nil // end of the backing file
		}
		lo += int64(n)
	}
	return nil
}

// copyBuffered copies [lo, hi) through a buffer, skipping blocks of zeros.
func (ds *diskSnap) copyBuffered(lo, hi int64) error {
	bp := saveBuffers.Get().(*[]byte)
	defer saveBuffers.Put(bp)
	buf := *bp
	bs := int64(1) << ds.shift
	for lo < hi {
		n, err := (&backingReader{fd: ds.liveFd}).ReadAt(buf[:min(hi-lo, int64(len(buf)))], lo)
		if err != nil && err != io.EOF {
			return err
		}
		for i := int64(0); i < int64(n); {
			j := min(int64(n), (lo+i+bs)&^(bs-1)-lo)
			if !zero.Is(buf[i:j]) {
				if _, err := pwrite(ds.storeFd, buf[i:j], lo+i); err != nil {
					return err
				}
			}
			i = j
		}
		if err == io.EOF || n == 0 {
			return nil
		}
		lo += int64(n)
	}
	return nil
}

// View is one disk of a snapshot as it was when the snapshot was taken. It
// reads saved before-images where a block has changed since, and the
// backing file elsewhere. Safe for concurrent use, also while the disk is
// being written through the mount: a read always returns the content at
// the snapshot. After Snapshot.Delete its methods return
// ErrSnapshotDeleted.
//
// It has the shape of the shipper's DiskView (io.ReaderAt, Size, Extents).
type View struct {
	ds *diskSnap
}

// Size returns the size of the disk at the snapshot.
func (v *View) Size() int64 { return v.ds.size }

// ReadAt reads len(p) bytes at off as they were at the snapshot; past
// Size it returns io.EOF as a file does.
//
// A block not saved yet is read from the backing file and its bit checked
// again afterwards: a change saves a block and sets its bit before it
// changes the block, so if the bit is still clear the backing file was
// read before the change; if it is set now, the block is read again from
// the saved before-image.
func (v *View) ReadAt(p []byte, off int64) (int, error) {
	ds := v.ds
	if err := ds.check(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("read %s at %d: negative offset", ds.rel, off)
	}
	if off >= ds.size {
		return 0, io.EOF
	}
	want := len(p)
	p = p[:min(int64(len(p)), ds.size-off)]
	if len(p) == 0 {
		return 0, nil
	}
	lastBlock := (off+int64(len(p))-1)>>ds.shift + 1
	for pos := int64(0); pos < int64(len(p)); {
		at := off + pos
		b := at >> ds.shift
		saved := ds.saved.get(b)
		// The run is block b, read as saved says, and the blocks after it
		// in the same state. It starts its search after b: a write may save
		// b right after get, and a search from b would then end the run
		// before it began (the unsaved read below checks b again).
		e := ds.saved.next(b+1, lastBlock, !saved)
		runEnd := min(e<<ds.shift, off+int64(len(p)))
		q := p[pos : runEnd-off]
		if saved {
			if err := readFull(ds.store, q, at); err != nil {
				return int(pos), err
			}
		} else {
			if err := readFull(ds.live, q, at); err != nil {
				return int(pos), err
			}
			for bb := ds.saved.next(b, e, true); bb < e; bb = ds.saved.next(bb+1, e, true) {
				lo := max(bb<<ds.shift, at)
				hi := min((bb+1)<<ds.shift, runEnd)
				if err := readFull(ds.store, p[lo-off:hi-off], lo); err != nil {
					return int(pos), err
				}
			}
		}
		pos = runEnd - off
	}
	// A save that failed during the read may have let a change through
	// unsaved.
	if err := ds.check(); err != nil {
		return 0, err
	}
	if len(p) < want {
		return len(p), io.EOF
	}
	return len(p), nil
}

// readFull reads len(p) bytes at off of f; what lies past its end reads as
// zeros.
func readFull(f *os.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if err == io.EOF {
		clear(p[n:])
		return nil
	}
	if errors.Is(err, os.ErrClosed) {
		return ErrSnapshotDeleted
	}
	return err
}

// Extents returns the byte ranges of the disk at the snapshot that may
// hold data, in order, not overlapping nor adjacent, within [0, Size()):
// every byte outside them reads as zero. They are the data extents
// (SEEK_DATA/SEEK_HOLE) of the backing file outside the saved blocks,
// merged with the data extents of the saved before-images. Holes cost
// nothing; allocated ranges of zeros may be listed.
func (v *View) Extents() ([]Extent, error) {
	ds := v.ds
	if err := ds.check(); err != nil {
		return nil, err
	}
	// The backing file first: a block unsaved now held its content at
	// the snapshot. A block saved from here on shows in the store, which
	// is read after the bitmap.
	live, err := dataExtents(ds.live, ds.size)
	if err != nil {
		return nil, err
	}
	nblocks := (ds.size + 1<<ds.shift - 1) >> ds.shift
	var unsaved []Extent
	for b := ds.saved.next(0, nblocks, false); b < nblocks; {
		e := ds.saved.next(b, nblocks, true)
		unsaved = append(unsaved, Extent{Off: b << ds.shift, Len: min(e<<ds.shift, ds.size) - b<<ds.shift})
		b = ds.saved.next(e, nblocks, false)
	}
	stored, err := dataExtents(ds.store, ds.size)
	if err != nil {
		return nil, err
	}
	all := append(intersect(live, unsaved), stored...)
	if err := ds.check(); err != nil {
		return nil, err
	}
	return mergeExtents(all), nil
}

// dataExtents lists the data extents of f within [0, size).
func dataExtents(f *os.File, size int64) ([]Extent, error) {
	conn, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var out []Extent
	var serr error
	cerr := conn.Control(func(fd uintptr) {
		for off := int64(0); off < size; {
			data, err := unix.Seek(int(fd), off, unix.SEEK_DATA)
			if err == unix.ENXIO {
				return
			}
			if err != nil {
				serr = err
				return
			}
			if data >= size {
				return
			}
			hole, err := unix.Seek(int(fd), data, unix.SEEK_HOLE)
			if err != nil {
				serr = err
				return
			}
			hole = min(hole, size)
			out = append(out, Extent{Off: data, Len: hole - data})
			off = hole
		}
	})
	if errors.Is(cerr, os.ErrClosed) {
		return nil, ErrSnapshotDeleted
	}
	if cerr != nil {
		return nil, cerr
	}
	if serr != nil {
		return nil, &os.PathError{Op: "seek", Path: f.Name(), Err: serr}
	}
	return out, nil
}

// intersect returns the parts of a (sorted, disjoint) inside b (sorted,
// disjoint).
func intersect(a, b []Extent) []Extent {
	var out []Extent
	for i, j := 0, 0; i < len(a) && j < len(b); {
		lo := max(a[i].Off, b[j].Off)
		hi := min(a[i].Off+a[i].Len, b[j].Off+b[j].Len)
		if lo < hi {
			out = append(out, Extent{Off: lo, Len: hi - lo})
		}
		if a[i].Off+a[i].Len < b[j].Off+b[j].Len {
			i++
		} else {
			j++
		}
	}
	return out
}

// mergeExtents sorts extents and joins those that overlap or touch.
func mergeExtents(ext []Extent) []Extent {
	sort.Slice(ext, func(i, j int) bool { return ext[i].Off < ext[j].Off })
	var out []Extent
	for _, e := range ext {
		if e.Len <= 0 {
			continue
		}
		if n := len(out); n > 0 && e.Off <= out[n-1].Off+out[n-1].Len {
			out[n-1].Len = max(out[n-1].Off+out[n-1].Len, e.Off+e.Len) - out[n-1].Off
			continue
		}
		out = append(out, e)
	}
	return out
}
