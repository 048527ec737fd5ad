// Package dirstore is a target.Store on a local directory: one replica file
// per disk that always holds the newest recovery point, and for every older
// retained point an undo journal of the blocks later generations overwrote.
//
// Every file access goes through an os.Root on the store's directory, so no
// name (nor a symbolic link planted inside the directory) reaches outside it.
// docs/dirstore-format.md specifies the layout and the undo file format.
//
// A generation arrives as one staged, verified frame stream per changed disk;
// Commit saves the undo data of every staged disk, writes an "applying"
// marker, applies the streams to the replicas, and writes the new manifest.
// A Store opened on a directory left by a crash finishes a commit that got as
// far as its marker and forgets one that did not, so the store is always at a
// complete recovery point (invariant 5).
//
// Concurrency: calls on different VMs run in parallel. On one VM, Stage calls
// run in parallel with each other (a stream is received without the VM lock
// and moved into place under it); Commit and Expire take the VM exclusively.
// A DiskReader keeps reading its point while later generations are
// committed, and Expire does not drop a point while a reader of it is open.
//
// Processes: one Store (Open) writes to a directory at a time; any number
// of read-only Stores (OpenReadOnly), in other processes or on other hosts
// sharing the directory, read it meanwhile and see only committed points
// (shared.go).
package dirstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/target"
)

// Options configure a Store.
type Options struct {
	// Clock is the clock of Point.Applied; the system clock if nil.
	Clock clock.Clock
}

// Store is a directory store. Create it with Open and release it with Close.
type Store struct {
	root     *os.Root
	lockf    *os.File // nil if readOnly
	readOnly bool
	clock    clock.Clock

	mu  sync.Mutex          // guards vms
	vms map[string]*vmState // created on first use, never removed

	// Test hooks, nil in production: stepHook is called after each durable
	// step of Commit, Expire and recovery (a test may exit the process
	// there); faultHook may fail a write of the named kind.
	stepHook  func(step string)
	faultHook func(op string) error

	sumRead atomic.Int64 // bytes of replicas and undo data read by Checksums, for tests
}

var _ target.Store = (*Store)(nil)

// vmState is what the store knows of one VM.
type vmState struct {
	name   string
	mu     sync.RWMutex // Commit, Expire and loading hold it exclusively; reads share it
	loaded atomic.Bool  // written under mu held exclusively

	// Guarded by mu.
	cleaned bool // temporary files of earlier processes removed
	owner   string
	points  []target.Point // oldest first; set with setPoints

	// published is points as of its last change, for Stage to check
	// without waiting for mu: a Commit holds mu for the whole apply, and
	// the next generation's stream is received meanwhile. The slices are
	// never changed in place.
	published atomic.Pointer[[]target.Point]

	pinMu sync.Mutex
	pins  map[uint64]int // open DiskReaders per point: Expire keeps these points

	xlMu sync.Mutex
	xl   *vmLock // the lock across processes; nil until first used

	// A read-only Store's view of the manifest: the lock epoch it last
	// checked it in and the lock's version then. Guarded by mu.
	epoch   uint64
	version uint64
}

// Open opens (creating it if needed) the store in dir for writing and
// finishes or forgets any commit a crash interrupted. Only one writing Store
// may have a directory open at a time, across processes; the error of a
// second one names the holder.
func Open(dir string, opts Options) (*Store, error) {
	return open(dir, opts, nil)
}

// OpenReadOnly opens the existing store in dir for reading while another
// process may write to it: Points, VMs, Open and Checksums see its committed
// points, and Stage, Commit and Expire fail. If no writer has the directory
// open, it first finishes any commit a crash interrupted, as Open would.
func OpenReadOnly(dir string, opts Options) (*Store, error) {
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	w, err := open(dir, opts, nil)
	switch {
	case err == nil:
		w.Close()
	case !errors.Is(err, errWouldBlock) && !errors.Is(err, fs.ErrPermission) && !errors.Is(err, syscall.EROFS):
		return nil, err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	s := &Store{root: root, readOnly: true, clock: opts.Clock, vms: map[string]*vmState{}}
	if s.clock == nil {
		s.clock = clock.System{}
	}
	return s, nil
}

// errReadOnly is the error of a change asked of a read-only Store.
var errReadOnly = permanentError{errors.New("dirstore: the store is open read-only (another process writes to it)")}

type permanentError struct{ error }

func (e permanentError) Unwrap() error   { return e.error }
func (e permanentError) Permanent() bool { return true }

// open is Open with a step hook for crash tests, set before recovery runs.
func open(dir string, opts Options, stepHook func(string)) (*Store, error) {
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	lockf, err := root.OpenFile(lockName, os.O_RDWR|os.O_CREATE, filePerm)
	if err == nil {
		if err = flock(lockf, lockExclusive, true); errors.Is(err, errWouldBlock) {
			err = heldBy(lockf)
		} else if err == nil {
			// Who holds it, for the error of a second writer.
			if lockf.Truncate(0) == nil {
				lockf.WriteAt([]byte(holder()+"\n"), 0)
			}
		}
		if err != nil {
			lockf.Close()
		}
	}
	if err != nil {
		root.Close()
		return nil, fmt.Errorf("dirstore: %s: %w", dir, err)
	}
	s := &Store{root: root, lockf: lockf, clock: opts.Clock, vms: map[string]*vmState{}, stepHook: stepHook}
	if s.clock == nil {
		s.clock = clock.System{}
	}
	if err := s.recoverAll(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// recoverAll loads every VM, which finishes interrupted commits. A VM that
// fails to load is retried on its next use, where its error is returned.
func (s *Store) recoverAll() error {
	names, err := s.vmDirs()
	if err != nil {
		return err
	}
	for _, vm := range names {
		s.load(vm)
	}
	return nil
}

// Close releases the directory. Open DiskReaders keep working (those of a
// read-only Store keep its VMs' lock files open for that).
func (s *Store) Close() error {
	var err error
	if s.lockf != nil {
		s.mu.Lock()
		for _, v := range s.vms {
			v.xlMu.Lock()
			if v.xl != nil {
				v.xl.lock.Close()
				v.xl.queue.Close()
				v.xl = nil
			}
			v.xlMu.Unlock()
		}
		s.mu.Unlock()
		s.lockf.Truncate(0)
		err = s.lockf.Close()
	}
	if rerr := s.root.Close(); err == nil {
		err = rerr
	}
	return err
}

func (s *Store) step(name string) {
	if s.stepHook != nil {
		s.stepHook(name)
	}
}

func (s *Store) fault(op string) error {
	if s.faultHook != nil {
		return s.faultHook(op)
	}
	return nil
}

// Layout; docs/dirstore-format.md.
func ownerPath(vm string) string         { return vm + "/owner" }
func manifestPath(vm string) string      { return vm + "/points.json" }
func markerPath(vm string) string        { return vm + "/applying" }
func tmpDir(vm string) string            { return vm + "/tmp" }
func replicaDir(vm string) string        { return vm + "/replica" }
func replicaPath(vm, disk string) string { return replicaDir(vm) + "/" + disk }
func stagingRoot(vm string) string       { return vm + "/staging" }
func stagingDir(vm string, gen uint64) string {
	return stagingRoot(vm) + "/" + strconv.FormatUint(gen, 10)
}
func stagedPath(vm string, gen uint64, d string) string { return stagingDir(vm, gen) + "/" + d }
func blocksRoot(vm string) string                       { return vm + "/blocks" }
func blocksDir(vm string, gen uint64) string {
	return blocksRoot(vm) + "/" + strconv.FormatUint(gen, 10)
}
func blocksPath(vm string, gen uint64, n string) string { return blocksDir(vm, gen) + "/" + n }
func undoRoot(vm string) string                         { return vm + "/undo" }
func undoDir(vm string, gen uint64) string              { return undoRoot(vm) + "/" + strconv.FormatUint(gen, 10) }
func undoPath(vm string, gen uint64, d string) string   { return undoDir(vm, gen) + "/" + d }

// manifest is the content of points.json.
type manifest struct {
	Format int            `json:"format"`
	VM     string         `json:"vm"`
	Points []target.Point `json:"points"`
}

// marker is the content of the applying marker: the commit in progress.
type marker struct {
	Format int          `json:"format"`
	Point  target.Point `json:"point"` // the point to add; Applied is set when it is
	Disks  []planDisk   `json:"disks"` // the staged disks, in apply order
}

// planDisk is one staged disk of a commit.
type planDisk struct {
	Name  string `json:"name"`
	Reset bool   `json:"reset"` // new to the VM: the replica starts empty
	Size  int64  `json:"size"`  // after the generation
}

const formatVersion = 1

// state returns the vmState of vm, created if needed.
func (s *Store) state(vm string) *vmState {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vms[vm]
	if v == nil {
		v = &vmState{name: vm, pins: map[uint64]int{}}
		s.vms[vm] = v
	}
	return v
}

// load loads vm if it is not loaded and returns its state (a writing
// Store).
func (s *Store) load(vm string) (*vmState, error) {
	v := s.state(vm)
	if v.loaded.Load() {
		return v, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.loaded.Load() {
		if err := s.loadExclusive(v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// loadExclusive is loadLocked under the VM's lock across processes.
func (s *Store) loadExclusive(v *vmState) error {
	l, err := s.vmLockOf(v)
	if err != nil {
		return err
	}
	if l != nil {
		if err := l.exclusive(); err != nil {
			return err
		}
		defer l.unlockExclusive()
	}
	return s.loadLocked(v)
}

// rlock returns vm's state, loaded, with its lock held shared; runlock
// releases it.
func (s *Store) rlock(vm string) (*vmState, error) {
	v := s.state(vm)
	if err := s.rlockState(v); err != nil {
		return nil, err
	}
	return v, nil
}

func (s *Store) rlockState(v *vmState) error {
	if s.readOnly {
		return s.rlockShared(v)
	}
	for {
		if _, err := s.load(v.name); err != nil {
			return err
		}
		v.mu.RLock()
		if v.loaded.Load() {
			return nil
		}
		v.mu.RUnlock() // a failed commit unloaded it: load again
	}
}

func (s *Store) runlock(v *vmState) {
	v.mu.RUnlock()
	if s.readOnly {
		v.xl.release()
	}
}

// rlockShared is rlock for a read-only Store: the VM's lock across
// processes shared, then its manifest read again if the writer replaced it.
func (s *Store) rlockShared(v *vmState) error {
	l, err := s.vmLockOf(v)
	if err != nil {
		return err
	}
	if l == nil {
		return notFoundVM(v.name)
	}
	epoch, err := l.shared()
	if err != nil {
		return fmt.Errorf("dirstore: VM %s: lock: %w", v.name, err)
	}
	v.mu.Lock()
	if v.epoch != epoch || !v.loaded.Load() {
		err = s.refreshManifestLocked(v)
		if err == nil {
			v.epoch = epoch
		}
	}
	v.mu.Unlock()
	if err != nil {
		l.release()
		return err
	}
	v.mu.RLock()
	return nil
}

// refreshManifestLocked reads v's owner and manifest if they are not
// loaded or the writer held the VM since they were. The writer is not
// changing the VM: the caller holds its lock shared, so an applying marker is a commit that
// failed or a writer that crashed (the writer, or the next Store to open
// the directory when none is running, finishes it).
func (s *Store) refreshManifestLocked(v *vmState) error {
	vm := v.name
	version, err := v.xl.version()
	if err != nil {
		return fmt.Errorf("dirstore: VM %s: lock: %w", vm, err)
	}
	if v.loaded.Load() && version == v.version {
		return nil // no writer held the VM since
	}
	if ok, err := s.exists(markerPath(vm)); err != nil || ok {
		v.loaded.Store(false)
		if err == nil {
			err = errors.New("a commit was interrupted; the process that writes to the target finishes it (or the next one to open the target when none runs): retry")
		}
		return fmt.Errorf("dirstore: VM %s: %w", vm, err)
	}
	if err := s.readManifest(v); err != nil {
		return err
	}
	v.version = version
	v.loaded.Store(true)
	return nil
}

// wlock returns vm's state, loaded, with its lock held exclusively, in
// this process and across processes; wunlock releases it.
func (s *Store) wlock(vm string) (*vmState, error) {
	if s.readOnly {
		return nil, errReadOnly
	}
	v := s.state(vm)
	v.mu.Lock()
	l, err := s.vmLockOf(v)
	if err == nil && l != nil {
		err = l.exclusive()
	}
	if err != nil {
		v.mu.Unlock()
		return nil, err
	}
	if !v.loaded.Load() {
		if err := s.loadLocked(v); err != nil {
			s.wunlock(v)
			return nil, err
		}
	}
	return v, nil
}

func (s *Store) wunlock(v *vmState) {
	if v.xl != nil {
		v.xl.unlockExclusive()
	}
	v.mu.Unlock()
}

// readManifest reads the owner and the manifest of v into it (mu held
// exclusively).
func (s *Store) readManifest(v *vmState) error {
	vm := v.name
	owner, err := s.readFile(ownerPath(vm))
	if err != nil {
		return fmt.Errorf("dirstore: VM %s: %w", vm, err)
	}
	var man manifest
	if b, err := s.readFile(manifestPath(vm)); err != nil {
		return fmt.Errorf("dirstore: VM %s: %w", vm, err)
	} else if b != nil {
		if err := json.Unmarshal(b, &man); err != nil || man.Format != formatVersion {
			return brokenError{fmt.Errorf("dirstore: VM %s: manifest (format %d): %v", vm, man.Format, err)}
		}
	}
	v.owner = strings.TrimSuffix(string(owner), "\n")
	v.setPoints(man.Points)
	return nil
}

// loadLocked reads the owner, manifest and marker of v, finishes or forgets
// an interrupted commit and removes what crashes left behind.
func (s *Store) loadLocked(v *vmState) error {
	vm := v.name
	if err := s.readManifest(v); err != nil {
		return err
	}

	if b, err := s.readFile(markerPath(vm)); err != nil {
		return fmt.Errorf("dirstore: VM %s: %w", vm, err)
	} else if b != nil {
		var mk marker
		if err := json.Unmarshal(b, &mk); err != nil || mk.Format != formatVersion {
			return brokenError{fmt.Errorf("dirstore: VM %s: applying marker (format %d): %v", vm, mk.Format, err)}
		}
		if n := v.newest(); n == nil || mk.Point.Generation > n.Generation {
			if err := s.rollForwardLocked(v, &mk); err != nil {
				return err
			}
		} else if err := s.finishLocked(v, mk.Point.Generation); err != nil {
			return err
		}
	}
	s.cleanLocked(v)
	v.loaded.Store(true)
	return nil
}

// cleanLocked removes leftovers of crashes: temporary files (on the first
// load only: later ones could belong to a running Stage), undo data of
// expired or uncommitted generations, staging of committed ones and replicas
// of disks no point holds. Failures only leave garbage.
func (s *Store) cleanLocked(v *vmState) {
	vm := v.name
	first := !v.cleaned
	if first {
		s.root.RemoveAll(tmpDir(vm))
		v.cleaned = true
	}
	var oldest, newest uint64
	if len(v.points) > 0 {
		oldest, newest = v.points[0].Generation, v.newest().Generation
	}
	for _, g := range s.genDirs(undoRoot(vm)) {
		if len(v.points) == 0 || g <= oldest || g > newest {
			s.removeAll(undoDir(vm, g))
		}
	}
	for _, g := range s.genDirs(stagingRoot(vm)) {
		if len(v.points) > 0 && g <= newest {
			s.removeAll(stagingDir(vm, g))
		}
	}
	for _, g := range s.genDirs(blocksRoot(vm)) {
		if len(v.points) > 0 && g <= newest {
			s.removeAll(blocksDir(vm, g))
		} else if first {
			s.removeUnstagedBlocks(vm, g)
		}
	}
	s.removeOrphansLocked(v)
	s.removeStalePins(v)
}

// removeUnstagedBlocks removes the blocks files of generation gen that no
// staged record names: those of a Stage that crashed or failed, or of a
// record replaced just before a crash. Only on the first load, when no
// Stage of this process can be writing one.
func (s *Store) removeUnstagedBlocks(vm string, gen uint64) {
	named := map[string]bool{}
	s.walkFiles(stagingDir(vm, gen), func(rel string) error {
		if st, err := s.readStaged(vm, gen, rel); err == nil {
			named[st.blocks] = true
		}
		return nil
	})
	var gone []string
	s.walkFiles(blocksDir(vm, gen), func(rel string) error {
		if !named[rel] {
			gone = append(gone, rel)
		}
		return nil
	})
	for _, name := range gone {
		s.root.Remove(blocksPath(vm, gen, name))
	}
}

// removeOrphansLocked removes the replicas of disks that no point holds.
func (s *Store) removeOrphansLocked(v *vmState) {
	held := map[string]bool{}
	for _, p := range v.points {
		for _, d := range p.Disks {
			held[d.Name] = true
		}
	}
	var orphans []string
	s.walkFiles(replicaDir(v.name), func(rel string) error {
		if !held[rel] {
			orphans = append(orphans, rel)
		}
		return nil
	})
	for _, d := range orphans {
		s.step("remove replica " + d)
		if s.root.Remove(replicaPath(v.name, d)) == nil {
			s.removeEmptyParents(replicaPath(v.name, d), replicaDir(v.name))
		}
	}
}

// genDirs lists the generation directories under dir, ascending.
func (s *Store) genDirs(dir string) []uint64 {
	f, err := s.root.Open(dir)
	if err != nil {
		return nil
	}
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	var gens []uint64
	for _, n := range names {
		if g, err := strconv.ParseUint(n, 10, 64); err == nil && strconv.FormatUint(g, 10) == n {
			gens = append(gens, g)
		}
	}
	slices.Sort(gens)
	return gens
}

// vmDirs lists the directories at the top of the store with valid VM names.
func (s *Store) vmDirs() ([]string, error) {
	f, err := s.root.Open(".")
	if err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && checkVM(e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names, nil
}

// setPoints sets points (mu held exclusively) and publishes them.
func (v *vmState) setPoints(points []target.Point) {
	v.points = points
	v.published.Store(&points)
}

// publishedPoints returns the points as of their last change, and false if
// v is not loaded (then only its lock gives them).
func (v *vmState) publishedPoints() ([]target.Point, bool) {
	p := v.published.Load()
	if p == nil || !v.loaded.Load() {
		return nil, false
	}
	return *p, true
}

func (v *vmState) newest() *target.Point { return newestOf(v.points) }

func (v *vmState) find(gen uint64) *target.Point { return findIn(v.points, gen) }

func newestOf(points []target.Point) *target.Point {
	if len(points) == 0 {
		return nil
	}
	return &points[len(points)-1]
}

func findIn(points []target.Point, gen uint64) *target.Point {
	for i := range points {
		if points[i].Generation == gen {
			return &points[i]
		}
	}
	return nil
}

func (s *Store) writeManifest(vm string, points []target.Point) error {
	b, err := json.MarshalIndent(manifest{Format: formatVersion, VM: vm, Points: points}, "", "\t")
	if err != nil {
		return err
	}
	return s.writeAtomic("manifest", manifestPath(vm), append(b, '\n'))
}

// VMs lists the VMs with at least one recovery point (and those whose
// manifest cannot be loaded: their Points says why).
func (s *Store) VMs(ctx context.Context) ([]string, error) {
	names, err := s.vmDirs()
	if err != nil {
		return nil, err
	}
	out := []string{}
	for _, vm := range names {
		v, err := s.rlock(vm)
		if err != nil {
			// Listed, so that its Points reports the error.
			if ok, _ := s.exists(manifestPath(vm)); ok {
				out = append(out, vm)
			}
			continue
		}
		if len(v.points) > 0 {
			out = append(out, vm)
		}
		s.runlock(v)
	}
	return out, nil
}

// Points lists the recovery points of vm, oldest first.
func (s *Store) Points(ctx context.Context, vm string) ([]target.Point, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	v, err := s.rlock(vm)
	if err != nil {
		return nil, err
	}
	defer s.runlock(v)
	if len(v.points) == 0 {
		return nil, notFoundVM(vm)
	}
	out := make([]target.Point, len(v.points))
	for i, p := range v.points {
		p.Disks = slices.Clone(p.Disks)
		out[i] = p
	}
	return out, nil
}

func notFoundVM(vm string) error {
	return fmt.Errorf("dirstore: VM %s: %w", vm, target.ErrNotFound)
}

// exists reports whether name exists in the store.
func (s *Store) exists(name string) (bool, error) {
	_, err := s.root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// diskSizes maps the disks of p to their sizes.
func diskSizes(p *target.Point) map[string]int64 {
	m := map[string]int64{}
	if p != nil {
		for _, d := range p.Disks {
			m[d.Name] = d.Size
		}
	}
	return m
}

// heldDisks returns every disk name some point of v holds, plus extra.
func heldDisks(v *vmState, extra []string) []string {
	set := map[string]bool{}
	for _, p := range v.points {
		for _, d := range p.Disks {
			set[d.Name] = true
		}
	}
	for _, d := range extra {
		set[d] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// brokenError is a state of the store that retrying will not mend (a
// damaged manifest or undo file): permanent, for an operator to look at.
type brokenError struct{ err error }

func (e brokenError) Error() string   { return e.err.Error() }
func (e brokenError) Unwrap() error   { return e.err }
func (e brokenError) Permanent() bool { return true }
