package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/drfs-project/drfs/internal/clock"
)

// Options configure Open.
type Options struct {
	// Dir is the state directory. It is created if missing (unless
	// ReadOnly).
	Dir string
	// Source is the absolute path of the source directory this state
	// belongs to. Open refuses a state directory of another source.
	Source string
	// BlockSize is the tracking granularity, a power of two from 512 to
	// 16 MiB; 4096 when zero. Reopening with another one is an error.
	BlockSize int
	// FS is where the state directory lives; vfs.Default when nil. Only the
	// state directory goes through it: the source files are stat'ed with
	// the os package.
	FS vfs.FS
	// ReadOnly opens the log to inspect it without changing anything:
	// Status, VMs, Frozen and ReadGeneration work, everything else returns
	// ErrReadOnly, and resync flags found at Open are shown, not stored.
	ReadOnly bool
	// Clock is the clock; the system clock when nil.
	Clock clock.Clock
	// NoInFlight keeps no in-flight table, as when FS is not the
	// operating system's: a crash of the process then flags every disk,
	// as a crash of the host does. For measuring the table's cost.
	NoInFlight bool
	// ActivityExtent and ActivitySlots shape the activity log (see
	// activity.go): the size of an extent, a power of two (4 MiB when 0),
	// and how many may be hot at once (1024 when 0). A crash of the host
	// costs comparing at most ActivityExtent × ActivitySlots bytes.
	ActivityExtent int64
	ActivitySlots  int
	// NoActivity keeps no activity log: a crash of the host then flags
	// every disk whole. For measuring its cost.
	NoActivity bool
	// SyncFile syncs the file of the disk at rel (relative to Source) to
	// stable storage, for the activity log's cooling; nil opens it under
	// Source and fsyncs it. Tests replace it to model what a crash of the
	// host keeps.
	SyncFile func(rel string) error
	// Reserve is the size of the reserve file kept in the state directory
	// (see SpaceStatus): 0 for min(64 MiB, a tenth of its file system),
	// negative for none.
	Reserve int64
}

// Errors of Open and of the Log's methods. The errors returned wrap them:
// test with errors.Is; the message says what to do.
var (
	ErrOtherSource = errors.New("state directory of another source")
	ErrFormat      = errors.New("incompatible state directory format")
	ErrBlockSize   = errors.New("state directory of another block size")
	ErrBusy        = errors.New("state directory in use")
	ErrReadOnly    = errors.New("change log opened read-only")
	ErrClosed      = errors.New("change log closed")
	ErrUnknownVM   = errors.New("unknown VM")
	ErrGeneration  = errors.New("no such frozen generation")
)

// openError carries a full one-line message and the sentinel it wraps.
type openError struct {
	kind error
	msg  string
}

func (e *openError) Error() string { return e.msg }
func (e *openError) Unwrap() error { return e.kind }

// Resync reasons set by the log itself.
const (
	reasonDirty    = "dirty shutdown: the change log was not closed cleanly"
	reasonOutside  = "changed outside the mount"
	reasonWrite    = "change log write failed"
	reasonSync     = "change log sync failed"
	reasonReadBack = "could not read changed blocks back from the disk"
	reasonDamaged  = "change log segment damaged"
	reasonFreeze   = "could not freeze a generation"
	reasonRenamed  = "renamed"
	reasonMoved    = "moved from another VM"
	reasonSize     = "size differs from the change log"
)

// Log is the change log of one source directory: for each VM, an active
// generation that records every change of its disks and the frozen
// generations waiting to be shipped.
//
// All methods are safe for concurrent use. Lock order: Log.nameMu,
// vm.rotMu, vm.dropMu, vm.rw, Log.mu, Disk.mu, generation.mu, vm.mu. The
// write path holds only vm.rw (shared), then Disk.mu and briefly
// generation.mu; it takes Log.mu (to store a resync mark) only after
// releasing Disk.mu.
type Log struct {
	opts   Options
	fs     vfs.FS
	bs     int64
	db     *pebble.DB
	lock   io.Closer
	closed atomic.Bool

	// dirty: the state directory was not closed cleanly before this Open.
	dirty bool
	// inflight is the in-flight table (inflight.go); nil when the state
	// directory is not on the operating system's file system, or
	// read-only. crash is what the previous process left in it, until
	// Open has acted on it; recovered, what that recovery did.
	inflight  *inFlight
	crash     crashState
	recovered Recovery
	stopBeat  chan struct{} // closed by Close: ends the heartbeat

	// activity is the activity log (activity.go); nil when read-only or
	// NoActivity. prevActivity is what the previous process left in it,
	// until Open has acted on it. The cooler runs until stopCool is
	// closed, then closes coolDone; settleMu serializes settle.
	activity     *activity
	prevActivity activityState
	stopCool     chan struct{}
	coolDone     chan struct{}
	settleMu     sync.Mutex

	// full: the state directory ran out of space (see reserve.go); space
	// holds the reserve's state and why it is full.
	full  atomic.Bool
	space struct {
		sync.Mutex
		size  int64
		held  bool
		since time.Time
		err   string
	}

	ops  sync.Pool // *op
	bufs sync.Pool // *[]byte of readChunk bytes, for ReadGeneration

	// readAhead is ReadGeneration's read-ahead window in bytes:
	// prefetchWindow, smaller in tests.
	readAhead int64

	// nameMu serializes OpenDisk, Renamed and Removed.
	nameMu sync.Mutex

	mu struct {
		sync.Mutex
		vms      map[string]*vm
		vmByID   map[uint32]*vm
		disks    map[uint32]*Disk // every disk with a record, removed ones too
		byRel    map[string]*Disk // disks present in the source
		nextVM   uint32
		nextDisk uint32
	}
}

// vm is one protected VM: a folder of the source directory, or one file at
// its top.
type vm struct {
	id uint32

	// rotMu serializes Rotate and Close of the VM.
	rotMu sync.Mutex
	// dropMu: ReadGeneration holds it shared, Drop exclusive.
	dropMu sync.RWMutex
	// rw: changes hold it shared from before they look at the active
	// generation until their records are written; Rotate holds it
	// exclusive to swap the active generation. So every change lands
	// wholly in one generation.
	rw     sync.RWMutex
	active *generation // guarded by rw; nil when read-only and empty

	mu struct {
		sync.Mutex
		gens     []*genInfo    // not dropped, ascending; the active one last
		unsynced []*generation // whose segments may hold unsynced records
	}

	// name is guarded by Log.mu.
	name string
}

// genInfo describes one generation of a VM that was not dropped.
type genInfo struct {
	n       uint64
	created time.Time
	frozen  bool
	live    *generation   // its in-memory index, until frozen
	stats   []genDiskStat // once frozen
}

// generation is the in-memory index and the segment of a generation that
// is active or being frozen.
type generation struct {
	n       uint64
	created time.Time
	seg     *segment
	broken  atomic.Bool // a segment write failed: never rescan it
	mu      struct {
		sync.Mutex
		disks map[uint32]*genDisk
	}
}

// Open opens (or creates) the state directory opts.Dir. It recovers the
// generations that were not frozen, and flags for resynchronization every
// disk whose tracking may have been lost: all of them after an unclean
// shutdown, and those whose file changed outside the mount.
func Open(opts Options) (*Log, error) {
	if opts.Dir == "" {
		return nil, errors.New("tracker: no state directory given")
	}
	// A read-only inspection may leave Source and BlockSize out: the log
	// knows its own.
	inspect := opts.ReadOnly && opts.Source == ""
	if !inspect && !filepath.IsAbs(opts.Source) {
		return nil, fmt.Errorf("tracker: source directory %q is not an absolute path", opts.Source)
	}
	if !inspect {
		opts.Source = filepath.Clean(opts.Source)
	}
	if opts.BlockSize == 0 {
		opts.BlockSize = 4096
	}
	if opts.ActivityExtent == 0 {
		opts.ActivityExtent = DefaultActivityExtent
	}
	if opts.ActivitySlots == 0 {
		opts.ActivitySlots = DefaultActivitySlots
	}
	if e := opts.ActivityExtent; e < int64(opts.BlockSize) || e&(e-1) != 0 || opts.ActivitySlots < 4 {
		return nil, fmt.Errorf("tracker: activity log of %d extents of %d bytes: the extent size must be a power of two of at least the block size, and there must be 4 extents or more", opts.ActivitySlots, e)
	}
	if bs := opts.BlockSize; bs < 512 || bs > 16<<20 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("tracker: block size %d is not a power of two from 512 to 16 MiB", bs)
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	// The in-flight table is a shared mapping of a file of the state
	// directory: only where that is a file of the operating system.
	osFS := onOS(opts.FS) && !opts.NoInFlight
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	fs := opts.FS
	if opts.ReadOnly {
		if _, err := fs.Stat(fs.PathJoin(opts.Dir, "index")); err != nil {
			return nil, fmt.Errorf("tracker: no change log in %s: %w", opts.Dir, err)
		}
	} else if err := fs.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("tracker: creating state directory: %w", err)
	}
	lock, err := fs.Lock(fs.PathJoin(opts.Dir, "LOCK"))
	if err != nil {
		return nil, &openError{ErrBusy, fmt.Sprintf(
			"tracker: state directory %s is in use by another drfs process (%v): stop that process first, or give this one another state directory", opts.Dir, err)}
	}
	var startFull bool
	if !opts.ReadOnly {
		if startFull, err = roomToOpen(fs, opts.Dir); err != nil {
			lock.Close()
			return nil, err
		}
	}
	// A write of the index that runs out of space releases the reserve
	// and is retried once (see reserve.go), rather than failing, which
	// Pebble cannot survive for its WAL.
	var full atomic.Pointer[Log]
	indexFS := fs
	if !opts.ReadOnly {
		indexFS = vfs.OnDiskFull(fs, func() {
			if l := full.Load(); l != nil {
				l.noteFull(errIndexFull)
			}
		})
	}
	db, err := pebble.Open(fs.PathJoin(opts.Dir, "index"), &pebble.Options{
		FS:       indexFS,
		ReadOnly: opts.ReadOnly,
		Logger:   quietLogger{},
	})
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("tracker: opening the index in %s: %w", opts.Dir, err)
	}
	if !opts.ReadOnly {
		// Make the directory entries of a new state directory durable:
		// otherwise a crash soon after creating it could lose the index.
		err := syncDir(fs, opts.Dir)
		if err == nil {
			err = syncDir(fs, fs.PathDir(opts.Dir))
		}
		if err != nil {
			db.Close()
			lock.Close()
			return nil, fmt.Errorf("tracker: syncing state directory %s: %w", opts.Dir, err)
		}
	}
	l := &Log{opts: opts, fs: fs, bs: int64(opts.BlockSize), db: db, lock: lock, readAhead: prefetchWindow}
	switch {
	case osFS && opts.ReadOnly:
		l.crash = readInFlight(opts.Dir)
	case osFS:
		if l.inflight, l.crash, err = openInFlight(opts.Dir); err != nil {
			db.Close()
			lock.Close()
			return nil, err
		}
	}
	l.prevActivity = readActivity(fs, l.activityPath())
	full.Store(l)
	l.mu.vms = make(map[string]*vm)
	l.mu.vmByID = make(map[uint32]*vm)
	l.mu.disks = make(map[uint32]*Disk)
	l.mu.byRel = make(map[string]*Disk)
	l.mu.nextVM, l.mu.nextDisk = 1, 1
	l.ops.New = func() any { return newOp(l.bs) }
	l.bufs.New = func() any {
		b := make([]byte, l.readChunk())
		return &b
	}
	if err := l.load(); err != nil {
		l.stopActivity(false)
		if l.inflight != nil {
			l.inflight.detach()
		}
		l.closeFiles()
		db.Close()
		lock.Close()
		return nil, err
	}
	if l.inflight != nil {
		l.stopBeat = make(chan struct{})
		go l.heartbeat()
	}
	if !opts.ReadOnly {
		if startFull {
			l.noteFull(errors.New("no room to open the change log: the reserve was released"))
		}
		l.openReserve()
	}
	return l, nil
}

type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}
func (quietLogger) Errorf(format string, args ...any) {
	pebble.DefaultLogger.Errorf(format, args...)
}
func (quietLogger) Fatalf(format string, args ...any) {
	pebble.DefaultLogger.Fatalf(format, args...)
}

func (l *Log) now() time.Time { return l.opts.Clock.Now() }

// get returns a copy of the value of key, or nil.
func (l *Log) get(key []byte) ([]byte, error) {
	v, c, err := l.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return append([]byte{}, v...), nil
}

// scan calls fn for every key with the given prefix.
func (l *Log) scan(prefix []byte, fn func(k, v []byte) error) error {
	upper := append([]byte{}, prefix...)
	upper[len(upper)-1]++ // prefixes used here never end in 0xff
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upper})
	if err != nil {
		return err
	}
	for it.First(); it.Valid(); it.Next() {
		if err := fn(it.Key(), it.Value()); err != nil {
			it.Close()
			return err
		}
	}
	if err := it.Error(); err != nil {
		it.Close()
		return err
	}
	return it.Close()
}

func (l *Log) empty() (bool, error) {
	it, err := l.db.NewIter(nil)
	if err != nil {
		return false, err
	}
	empty := !it.First()
	if err := it.Close(); err != nil {
		return false, err
	}
	return empty, nil
}

func (l *Log) load() error {
	dir := l.opts.Dir
	raw, err := l.get([]byte{keyFormat})
	if err != nil {
		return fmt.Errorf("tracker: reading %s: %w", dir, err)
	}
	fresh := raw == nil
	if fresh {
		empty, err := l.empty()
		if err != nil {
			return err
		}
		if !empty {
			return &openError{ErrFormat, fmt.Sprintf(
				"tracker: state directory %s has no format record: it is damaged or not a drfs state directory; use an empty directory (every disk is then resynchronized)", dir)}
		}
		if l.opts.ReadOnly {
			return fmt.Errorf("tracker: no change log in %s", dir)
		}
		fr := formatRecord{version: formatVersion, blockSize: uint32(l.bs), source: l.opts.Source}
		if err := l.db.Set([]byte{keyFormat}, fr.encode(), pebble.Sync); err != nil {
			return fmt.Errorf("tracker: initialising %s: %w", dir, err)
		}
	} else {
		fr, err := decodeFormat(raw)
		if err != nil {
			return &openError{ErrFormat, fmt.Sprintf("tracker: state directory %s: %v; use an empty directory (every disk is then resynchronized)", dir, err)}
		}
		if fr.version != formatVersion {
			return &openError{ErrFormat, fmt.Sprintf(
				"tracker: state directory %s has format version %d and this drfs reads version %d: run a drfs of that version, or start over with an empty state directory (every disk is then resynchronized)",
				dir, fr.version, formatVersion)}
		}
		if l.opts.ReadOnly && l.opts.Source == "" {
			l.opts.Source, l.opts.BlockSize, l.bs = fr.source, int(fr.blockSize), int64(fr.blockSize)
		}
		if int64(fr.blockSize) != l.bs {
			return &openError{ErrBlockSize, fmt.Sprintf(
				"tracker: state directory %s was created with block size %d, not %d: open it with block size %d, or use an empty state directory",
				dir, fr.blockSize, l.bs, fr.blockSize)}
		}
		if fr.source != l.opts.Source {
			return &openError{ErrOtherSource, fmt.Sprintf(
				"tracker: state directory %s belongs to source %s, not %s: give each source directory its own state directory",
				dir, fr.source, l.opts.Source)}
		}
	}
	clean := fresh
	if !fresh {
		c, err := l.get([]byte{keyClean})
		if err != nil {
			return err
		}
		clean = c != nil
	}
	l.dirty = !clean
	// A process that died on this host left its writes in the page cache:
	// only what it had in flight can be missing from the log.
	processCrash := l.dirty && l.crash.sameBoot

	if err := l.loadMeta(); err != nil {
		return fmt.Errorf("tracker: reading the index of %s: %w", dir, err)
	}
	vms := make([]*vm, 0, len(l.mu.vmByID))
	for _, v := range l.mu.vmByID {
		vms = append(vms, v)
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].id < vms[j].id })
	for _, v := range vms {
		if err := l.recoverVM(v, clean, processCrash); err != nil {
			return fmt.Errorf("tracker: recovering VM %s in %s: %w", v.name, dir, err)
		}
	}
	if !l.opts.ReadOnly {
		l.removeOrphanSegments()
	}
	disks := l.sortedDisks()
	switch {
	case processCrash:
		l.recoverInFlight(disks)
	case l.dirty && l.prevActivity.valid:
		l.recoverHot(disks, l.prevActivity)
	case l.dirty:
		for _, d := range disks {
			if !d.meta.removed {
				l.markResync(d, reasonDirty)
			}
		}
	default:
		for _, d := range disks {
			if !d.meta.removed && d.meta.hasIdentity {
				if why := l.identityChanged(d); why != "" {
					l.markResync(d, reasonOutside+": "+why)
				}
			}
		}
	}
	// What the previous process left is acted on (a crash before this
	// point finds it again).
	l.crash = crashState{}
	l.prevActivity = activityState{}
	if l.inflight != nil {
		l.inflight.reset(bootID())
	}
	if !l.opts.ReadOnly {
		if err := l.startActivity(); err != nil {
			return err
		}
	}
	// The base of the checks for changes behind the mount's back.
	l.mu.Lock()
	for _, d := range disks {
		if !d.meta.removed {
			l.watchLocked(d)
		}
	}
	l.mu.Unlock()
	if !l.opts.ReadOnly {
		// From here on a crash must be noticed at the next Open.
		if err := l.db.Delete([]byte{keyClean}, pebble.Sync); err != nil {
			return err
		}
	}
	return nil
}

// allVMs returns every VM of the log, in no order.
func (l *Log) allVMs() []*vm {
	l.mu.Lock()
	defer l.mu.Unlock()
	vms := make([]*vm, 0, len(l.mu.vmByID))
	for _, v := range l.mu.vmByID {
		vms = append(vms, v)
	}
	return vms
}

func (l *Log) sortedDisks() []*Disk {
	l.mu.Lock()
	defer l.mu.Unlock()
	ds := make([]*Disk, 0, len(l.mu.disks))
	for _, d := range l.mu.disks {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].id < ds[j].id })
	return ds
}

func (l *Log) loadMeta() error {
	err := l.scan([]byte{keyVM}, func(k, val []byte) error {
		if len(k) != 5 {
			return fmt.Errorf("damaged VM key %x", k)
		}
		r, err := decodeVM(val)
		if err != nil {
			return err
		}
		v := &vm{id: be32(k[1:]), name: r.name}
		l.mu.vms[r.name] = v
		l.mu.vmByID[v.id] = v
		l.mu.nextVM = max(l.mu.nextVM, v.id+1)
		return nil
	})
	if err != nil {
		return err
	}
	err = l.scan([]byte{keyDisk}, func(k, val []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("damaged disk key %x", k)
		}
		v := l.mu.vmByID[be32(k[1:])]
		if v == nil {
			return fmt.Errorf("disk key %x of an unknown VM", k)
		}
		r, err := decodeDisk(val)
		if err != nil {
			return err
		}
		d := l.newDiskObject(v, be32(k[5:]), r.rel)
		d.setMeta(r)
		if d.meta.resync && strings.HasPrefix(d.meta.reason, reasonWrite) {
			d.unlogged.Store(true)
		}
		l.mu.disks[d.id] = d
		if !d.meta.removed {
			l.mu.byRel[r.rel] = d
		}
		l.mu.nextDisk = max(l.mu.nextDisk, d.id+1)
		if d.meta.resync {
			d.flagged.Store(true)
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = l.scan([]byte{keyHot}, func(k, val []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("damaged hot ranges key %x", k)
		}
		rs, err := decodeHot(val)
		if err != nil {
			return err
		}
		if d := l.mu.disks[be32(k[5:])]; d != nil && d.meta.resync {
			d.meta.hot = rs
		}
		return nil
	})
	if err != nil {
		return err
	}
	err = l.scan([]byte{keySize}, func(k, val []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("damaged size key %x", k)
		}
		size, n := binary.Varint(val)
		if n <= 0 {
			return fmt.Errorf("damaged size of key %x", k)
		}
		if d := l.mu.disks[be32(k[5:])]; d != nil {
			d.mu.size = size
		}
		return nil
	})
	if err != nil {
		return err
	}
	return l.scan([]byte{keyGen}, func(k, val []byte) error {
		if len(k) != 13 {
			return fmt.Errorf("damaged generation key %x", k)
		}
		v := l.mu.vmByID[be32(k[1:])]
		if v == nil {
			return fmt.Errorf("generation key %x of an unknown VM", k)
		}
		r, err := decodeGen(val)
		if err != nil {
			return err
		}
		gi := &genInfo{n: be64(k[5:]), created: fromUnixNano(r.created), frozen: r.state == genFrozen}
		if gi.frozen {
			gi.stats = r.disks
		}
		v.mu.gens = append(v.mu.gens, gi)
		return nil
	})
}

// recoverVM rebuilds the VM's generations that were not frozen from their
// segments. The last one stays active when the log was closed cleanly and
// its segment ends with a whole record; the others are frozen now.
//
// After a process crash (skipHoles) the scan goes past the records that
// were in flight, and the last generation stays active: recoverInFlight
// then records again the blocks those records held.
func (l *Log) recoverVM(v *vm, clean, skipHoles bool) error {
	gens := v.mu.gens
	for i, gi := range gens {
		if gi.frozen {
			for _, s := range gi.stats {
				if d := l.mu.disks[s.disk]; d != nil {
					d.logBytes.Add(int64(s.dataBlocks) * l.bs)
				}
			}
			continue
		}
		last := i == len(gens)-1
		g, res, err := l.recoverGeneration(v, gi, skipHoles)
		damaged := err != nil || res.torn()
		if skipHoles {
			damaged = err != nil || res.unexplained
		}
		// A torn tail is expected after a crash (every disk is flagged
		// then anyway); after a clean close it means records were lost.
		if (clean || skipHoles) && damaged {
			for id := range g.mu.disks {
				if d := l.mu.disks[id]; d != nil {
					l.markResync(d, fmt.Sprintf("%s (generation %d)", reasonDamaged, gi.n))
				}
			}
		}
		gi.live = g
		if l.opts.ReadOnly || (last && (clean || skipHoles) && !damaged) {
			v.active = g
			continue
		}
		if err := l.freeze(v, gi); err != nil {
			return err
		}
	}
	if v.active == nil && !l.opts.ReadOnly {
		next := uint64(1)
		if len(v.mu.gens) > 0 {
			next = v.mu.gens[len(v.mu.gens)-1].n + 1
		}
		gi, err := l.newGeneration(v, next)
		if err != nil {
			return err
		}
		v.mu.gens = append(v.mu.gens, gi)
		v.active = gi.live
	}
	if v.active != nil && !l.opts.ReadOnly {
		v.mu.unsynced = append(v.mu.unsynced, v.active)
	}
	// Point each disk at its state in the active generation.
	if g := v.active; g != nil {
		for id, gd := range g.mu.disks {
			if d := l.mu.disks[id]; d != nil {
				d.mu.gen, d.mu.gd = g, gd
				d.mu.size = gd.size
			}
		}
	}
	return nil
}

// recoverGeneration rebuilds a generation's index by reading its segment.
// It always returns a usable generation, empty when the segment is missing
// or unreadable (the error says so).
func (l *Log) recoverGeneration(v *vm, gi *genInfo, skipHoles bool) (*generation, scanResult, error) {
	g := &generation{n: gi.n, created: gi.created}
	g.mu.disks = make(map[uint32]*genDisk)
	path := segmentPath(l.fs, l.opts.Dir, v.id, gi.n)
	g.seg = &segment{path: path}
	var f vfs.File
	var err error
	if l.opts.ReadOnly {
		f, err = l.fs.Open(path)
	} else {
		f, err = l.fs.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
	}
	if err != nil {
		return g, scanResult{}, err
	}
	res, err := scanSegment(f, l.bs, skipHoles, func(h recHeader, dataOff int64) {
		d := l.mu.disks[h.disk]
		if d == nil {
			return
		}
		gd := g.mu.disks[h.disk]
		if gd == nil {
			gd = newGenDisk(h.disk, d.mu.size)
			g.mu.disks[h.disk] = gd
		}
		delta := gd.replay(h, dataOff, l.bs)
		d.logBytes.Add(int64(delta) * l.bs)
	})
	if err == nil && res.header.gen != gi.n {
		err = fmt.Errorf("segment %s holds generation %d", path, res.header.gen)
	}
	for id, gd := range g.mu.disks {
		if d := l.mu.disks[id]; d != nil {
			d.mu.size = gd.size
		}
	}
	g.seg.f = f
	g.seg.tail.Store(max(res.end, segHeaderSize))
	if skipHoles && err == nil && !res.unexplained && !l.opts.ReadOnly {
		// New records go after everything the dead process wrote, and
		// what it tore reads as a hole from now on, so that the next
		// scan finds the same records.
		g.seg.tail.Store(max(res.size, segHeaderSize))
		if err = zeroRanges(f, res.junk); err != nil {
			err = fmt.Errorf("clearing the torn records of %s: %w", path, err)
		}
	}
	return g, res, err
}

// removeOrphanSegments removes segment files of generations the index does
// not know: left by a crash between creating a segment and recording its
// generation, or between dropping a generation and removing its file.
func (l *Log) removeOrphanSegments() {
	for _, v := range l.mu.vmByID {
		known := make(map[string]bool)
		for _, gi := range v.mu.gens {
			known[l.fs.PathBase(segmentPath(l.fs, l.opts.Dir, v.id, gi.n))] = true
		}
		dir := segmentDir(l.fs, l.opts.Dir, v.id)
		names, err := l.fs.List(dir)
		if err != nil {
			continue
		}
		for _, n := range names {
			if !known[n] {
				_ = l.fs.Remove(l.fs.PathJoin(dir, n))
			}
		}
	}
}

// newGeneration creates generation n of v: its segment (durable, with its
// directory entry) and then its record in the index.
func (l *Log) newGeneration(v *vm, n uint64) (*genInfo, error) {
	created := l.now()
	seg, err := createSegment(l.fs, l.opts.Dir, int(l.bs), v.id, n, unixNano(created))
	if l.checkSpace(err) != nil {
		return nil, fmt.Errorf("creating the segment of generation %d: %w", n, err)
	}
	rec := genRecord{state: genActive, created: unixNano(created)}
	if err := l.db.Set(genKey(v.id, n), rec.encode(), pebble.Sync); l.checkSpace(err) != nil {
		seg.close()
		return nil, fmt.Errorf("recording generation %d: %w", n, err)
	}
	g := &generation{n: n, created: created, seg: seg}
	g.mu.disks = make(map[uint32]*genDisk)
	return &genInfo{n: n, created: created, live: g}, nil
}

// Close shuts the log down cleanly: it syncs every segment, records the
// identity (size, mtime, inode) of every disk so the next Open can tell a
// disk changed outside the mount, and stores the clean-shutdown marker.
// Changes reported after Close are ignored.
func (l *Log) Close() error {
	if !l.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	var errs []error
	clean := false
	if !l.opts.ReadOnly {
		ok := true
		if l.activity != nil {
			// The disks' files too are synced: a crash of the host after
			// a clean close then finds them as the log says.
			if err := l.settle(); err != nil {
				errs = append(errs, fmt.Errorf("tracker: syncing the disks at close: %w", err))
				ok = false
			}
		}
		for _, v := range l.allVMs() {
			v.rotMu.Lock()
			v.rw.Lock() // waits for changes in flight
			if g := v.active; g != nil {
				if g.broken.Load() {
					// A write into it failed: its segment cannot be
					// trusted to rescan, so freeze it from memory.
					v.mu.Lock()
					gi := v.mu.gens[len(v.mu.gens)-1]
					v.mu.Unlock()
					if err := l.freeze(v, gi); err != nil {
						errs = append(errs, err)
						ok = false
					}
				} else if err := g.seg.syncData(); err != nil {
					errs = append(errs, fmt.Errorf("tracker: syncing generation %d of %s: %w", g.n, v.name, err))
					ok = false
				}
			}
			v.rw.Unlock()
			v.rotMu.Unlock()
		}
		if ok {
			if err := l.persistClean(); err != nil {
				errs = append(errs, err)
			} else {
				clean = true
			}
		}
	}
	l.stopActivity(clean)
	l.closeFiles()
	if l.inflight != nil {
		close(l.stopBeat)
		l.inflight.detach()
	}
	if err := l.db.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := l.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// persistClean records every disk's identity and the clean marker in one
// synced batch.
func (l *Log) persistClean() error {
	b := l.db.NewBatch()
	defer b.Close()
	for _, d := range l.sortedDisks() {
		d.mu.Lock()
		size := d.mu.size
		d.mu.Unlock()
		l.mu.Lock()
		if !d.meta.removed {
			if id, ok := statIdentity(l.sourcePath(d.meta.rel)); ok {
				d.meta.identity, d.meta.hasIdentity = id, true
			} else {
				d.meta.hasIdentity = false
			}
		}
		rec := d.recordLocked()
		l.mu.Unlock()
		if err := b.Set(diskKey(d.v.id, d.id), rec.encode(), nil); err != nil {
			return err
		}
		if err := b.Set(sizeKey(d.v.id, d.id), binary.AppendVarint(nil, size), nil); err != nil {
			return err
		}
	}
	if err := b.Set([]byte{keyClean}, []byte{1}, nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("tracker: recording the clean shutdown: %w", err)
	}
	return nil
}

func (l *Log) closeFiles() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, v := range l.mu.vmByID {
		v.mu.Lock()
		for _, gi := range v.mu.gens {
			if gi.live != nil && gi.live.seg != nil {
				gi.live.seg.close()
			}
		}
		v.mu.Unlock()
	}
}

func (l *Log) sourcePath(rel string) string {
	return filepath.Join(l.opts.Source, filepath.FromSlash(rel))
}

// identityChanged compares the disk's file with the identity the last
// Close recorded and says how it differs, or "".
func (l *Log) identityChanged(d *Disk) string {
	id, ok := statIdentity(l.sourcePath(d.meta.rel))
	want := d.meta.identity
	switch {
	case !ok:
		return "the file is missing"
	case id.inode != want.inode:
		return fmt.Sprintf("inode %d, was %d", id.inode, want.inode)
	case id.size != want.size:
		return fmt.Sprintf("size %d, was %d", id.size, want.size)
	case id.mtime != want.mtime:
		return fmt.Sprintf("modified %s, was %s",
			time.Unix(0, id.mtime).UTC().Format(time.RFC3339Nano),
			time.Unix(0, want.mtime).UTC().Format(time.RFC3339Nano))
	}
	return ""
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func be64(b []byte) uint64 {
	return uint64(be32(b))<<32 | uint64(be32(b[4:]))
}
