package dirstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"

	"github.com/drfs-project/drfs/target"
)

// Commit applies the staged disks of generation gen and makes it the newest
// recovery point of vm:
//
//  1. save the undo data of every staged disk (the replica's bytes the
//     generation overwrites, and its size) and sync it;
//  2. write the applying marker;
//  3. apply the staged disks to the replicas (a hard link of a new disk's
//     blocks file, an in-kernel copy of ranges into an existing replica)
//     and sync them;
//  4. write the manifest with the new point;
//  5. remove the marker and the staging.
//
// A crash before step 2 leaves the previous point (the next load drops the
// undo data); a crash after it leaves a marker from which the next load
// finishes the commit, re-applying the streams (the same bytes to the same
// places) but keeping the undo data of step 1. An error in step 3 or 4 (a
// full disk) undoes the applied part from the undo data and returns the
// error; the staging stays, so a retry needs no new Stage. The context is
// honoured until step 2.
func (s *Store) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	if s.readOnly {
		return errReadOnly
	}
	if err := checkVM(vm); err != nil {
		return err
	}
	if err := checkName("source", c.Source); err != nil {
		return err
	}
	if len(c.Disks) == 0 {
		return fmt.Errorf("dirstore: commit %s generation %d: %w: no disks", vm, gen, target.ErrBadName)
	}
	seen := map[string]bool{}
	for _, d := range c.Disks {
		if err := checkDisk(d); err != nil {
			return err
		}
		if seen[d] {
			return badName("disk", d, "is listed twice")
		}
		seen[d] = true
	}

	v, err := s.wlock(vm)
	if err != nil {
		return err
	}
	defer s.wunlock(v)
	if v.owner != "" && v.owner != c.Source {
		return fmt.Errorf("dirstore: commit %s: %w: the VM is replicated from %q, not %q", vm, target.ErrWrongSource, v.owner, c.Source)
	}
	if v.find(gen) != nil {
		return nil
	}
	if n := v.newest(); n != nil && gen < n.Generation {
		return fmt.Errorf("dirstore: commit %s generation %d: %w: the newest point is %d", vm, gen, target.ErrOutOfOrder, n.Generation)
	}
	if a, b, ok := conflict(heldDisks(v, c.Disks)); ok {
		return badName("disk", b, fmt.Sprintf("is inside disk %q", a))
	}
	mk, err := s.planLocked(v, gen, c)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dirstore: commit %s generation %d: %w", vm, gen, err)
	}
	return s.commitLocked(ctx, v, mk, c.Source)
}

// planLocked checks the staged disks of gen against the commit and the
// newest point, and returns the marker of the commit.
func (s *Store) planLocked(v *vmState, gen uint64, c target.Commit) (*marker, error) {
	vm := v.name
	fail := func(kind error, format string, args ...any) error {
		return fmt.Errorf("dirstore: commit %s generation %d: %w: %s", vm, gen, kind, fmt.Sprintf(format, args...))
	}
	var staged []string
	if err := s.walkFiles(stagingDir(vm, gen), func(rel string) error {
		staged = append(staged, rel)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("dirstore: commit %s generation %d: %w", vm, gen, err)
	}
	newest := v.newest()
	prev := diskSizes(newest)
	listed := map[string]bool{}
	for _, d := range c.Disks {
		listed[d] = true
	}
	mk := &marker{Format: formatVersion}
	for _, d := range staged {
		if !listed[d] {
			return nil, fail(target.ErrNotFound, "disk %s is staged but not among the commit's disks %q", d, c.Disks)
		}
		h, err := s.readStaged(vm, gen, d)
		if errors.Is(err, errStagedCorrupt) {
			return nil, fail(target.ErrCorrupt, "%v", err)
		}
		if err != nil {
			return nil, err
		}
		_, known := prev[d]
		switch {
		case known && h.base != newest.Generation:
			return nil, fail(target.ErrOutOfOrder, "disk %s: the stream applies on generation %d, the newest point is %d", d, h.base, newest.Generation)
		case !known && h.base != 0 && (newest == nil || h.base != newest.Generation):
			return nil, fail(target.ErrOutOfOrder, "new disk %s: the stream applies on generation %d", d, h.base)
		case h.diskSize > math.MaxInt64/2:
			return nil, fail(target.ErrCorrupt, "disk %s: size %d", d, h.diskSize)
		}
		mk.Disks = append(mk.Disks, planDisk{Name: d, Reset: !known, Size: h.diskSize})
	}
	p := target.Point{
		VM:            vm,
		Generation:    gen,
		Frozen:        c.Frozen.UTC().Round(0),
		Kind:          c.Kind,
		AppConsistent: c.AppConsistent,
	}
	for _, d := range slices.Sorted(slices.Values(c.Disks)) {
		size, ok := prev[d]
		if i := slices.IndexFunc(mk.Disks, func(pd planDisk) bool { return pd.Name == d }); i >= 0 {
			size, ok = mk.Disks[i].Size, true
		}
		if !ok {
			return nil, fail(target.ErrNotFound, "disk %s is new at this point but has no staged stream", d)
		}
		p.Disks = append(p.Disks, target.DiskInfo{Name: d, Size: size})
	}
	mk.Point = p
	return mk, nil
}

// commitLocked runs the commit protocol for mk.
func (s *Store) commitLocked(ctx context.Context, v *vmState, mk *marker, source string) error {
	vm, gen := v.name, mk.Point.Generation
	wrap := func(err error) error { return fmt.Errorf("dirstore: commit %s generation %d: %w", vm, gen, err) }
	if v.owner == "" {
		if err := s.writeAtomic("owner", ownerPath(vm), []byte(source+"\n")); err != nil {
			return wrap(err)
		}
		v.owner = source
		s.step("owner")
	}

	// 1. Undo data.
	if err := s.removeAll(undoDir(vm, gen)); err != nil {
		return wrap(err)
	}
	var total int64
	for _, d := range mk.Disks {
		err := ctx.Err()
		var n int64
		if err == nil {
			n, err = s.writeUndo(vm, gen, d)
		}
		if err != nil {
			s.removeAll(undoDir(vm, gen))
			return wrap(err)
		}
		total += n
		s.step("undo " + d.Name)
	}
	mk.Point.Bytes = total

	// 2. Marker.
	b, err := json.Marshal(mk)
	if err == nil {
		err = s.writeAtomic("marker", markerPath(vm), b)
	}
	if err != nil {
		s.removeAll(undoDir(vm, gen))
		return wrap(err)
	}
	s.step("marker")

	// 3. Apply.
	for _, d := range mk.Disks {
		if err := s.applyDisk(vm, gen, d); err != nil {
			return s.abortLocked(v, mk, wrap(err))
		}
		s.step("apply " + d.Name)
	}
	// 4 and 5.
	if err := s.publishLocked(v, mk); err != nil {
		return s.abortLocked(v, mk, wrap(err))
	}
	return nil
}

// rollForwardLocked finishes a commit a crash interrupted after its marker.
func (s *Store) rollForwardLocked(v *vmState, mk *marker) error {
	vm, gen := v.name, mk.Point.Generation
	for _, d := range mk.Disks {
		err := s.applyDisk(vm, gen, d)
		if errors.Is(err, target.ErrCorrupt) || errors.Is(err, fs.ErrNotExist) {
			// The staged stream is gone or damaged: go back instead.
			return s.abortLocked(v, mk, fmt.Errorf("dirstore: finishing commit %s generation %d: %w", vm, gen, err))
		}
		if err != nil {
			return fmt.Errorf("dirstore: finishing commit %s generation %d: %w", vm, gen, err)
		}
		s.step("recover apply " + d.Name)
	}
	return s.publishLocked(v, mk)
}

// publishLocked writes the manifest with the new point (step 4) and removes
// the marker and staging (step 5).
func (s *Store) publishLocked(v *vmState, mk *marker) error {
	p := mk.Point
	p.Applied = s.clock.Now().UTC().Round(0)
	points := append(slices.Clip(v.points), p)
	if err := s.writeManifest(v.name, points); err != nil {
		// The rename may have happened; then the commit is done (and if it
		// is not durable, the marker still is).
		var man manifest
		if b, rerr := s.readFile(manifestPath(v.name)); rerr != nil || json.Unmarshal(b, &man) != nil ||
			len(man.Points) == 0 || man.Points[len(man.Points)-1].Generation != p.Generation {
			return err
		}
	}
	v.setPoints(points)
	s.step("manifest")
	return s.finishLocked(v, p.Generation)
}

// finishLocked removes the marker and the staging of gen and older.
func (s *Store) finishLocked(v *vmState, gen uint64) error {
	if err := s.root.Remove(markerPath(v.name)); err == nil {
		s.syncDir(v.name)
	}
	s.step("marker removed")
	if len(v.points) == 1 {
		s.removeAll(undoDir(v.name, gen)) // nothing before the first point to go back to
	}
	for _, g := range s.genDirs(stagingRoot(v.name)) {
		if g <= gen {
			s.removeAll(stagingDir(v.name, g))
		}
	}
	for _, g := range s.genDirs(blocksRoot(v.name)) {
		if g <= gen {
			s.removeAll(blocksDir(v.name, g))
		}
	}
	s.step("staging removed")
	return nil
}

// abortLocked undoes a commit that failed after its marker: the replicas
// get their bytes back from the undo data, then the marker and the undo
// data go. If that fails too, v is unloaded: its next use loads it again,
// which finishes the commit from the marker.
func (s *Store) abortLocked(v *vmState, mk *marker, cause error) error {
	vm, gen := v.name, mk.Point.Generation
	for _, d := range mk.Disks {
		if err := s.rollbackDisk(vm, gen, d); err != nil {
			v.loaded.Store(false)
			return fmt.Errorf("%w (undoing it failed too: %v)", cause, err)
		}
	}
	if err := s.root.Remove(markerPath(vm)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		v.loaded.Store(false)
		return cause
	}
	s.syncDir(vm)
	s.removeAll(undoDir(vm, gen))
	return cause
}
