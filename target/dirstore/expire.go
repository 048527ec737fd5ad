package dirstore

import (
	"context"
	"slices"
	"time"

	"github.com/drfs-project/drfs/target"
)

// Expire drops the oldest points of vm whose time (Frozen, or Applied if
// Frozen is unset) is before before, keeping at least keep points and
// always the newest. Points are dropped oldest first: it stops at the first
// point that is not old enough, or that an open DiskReader holds (of this
// Store or of a read-only one in another process).
//
// Dropping points P1..Pk deletes the undo data of P2..Pk+1, which only
// served to go back from them: Pk+1 becomes the oldest point, and disks no
// remaining point holds lose their replica.
func (s *Store) Expire(ctx context.Context, vm string, before time.Time, keep int) error {
	if s.readOnly {
		return errReadOnly
	}
	if err := checkVM(vm); err != nil {
		return err
	}
	v, err := s.wlock(vm)
	if err != nil {
		return err
	}
	defer s.wunlock(v)
	if len(v.points) == 0 {
		return notFoundVM(vm)
	}
	maxDrop := len(v.points) - max(keep, 1)
	drop := 0
	v.pinMu.Lock()
	for drop < maxDrop && pointTime(&v.points[drop]).Before(before) && v.pins[v.points[drop].Generation] == 0 &&
		!s.pinnedElsewhere(vm, v.points[drop].Generation) {
		drop++
	}
	v.pinMu.Unlock()
	if drop == 0 {
		return nil
	}
	old := v.points
	kept := slices.Clone(old[drop:])
	if err := s.writeManifest(vm, kept); err != nil {
		return err
	}
	v.setPoints(kept)
	s.step("expire manifest")
	for _, p := range old[:drop+1] {
		s.removeAll(undoDir(vm, p.Generation))
		s.step("expire undo")
	}
	s.removeOrphansLocked(v)
	s.removeStalePins(v)
	return nil
}

func pointTime(p *target.Point) time.Time {
	if p.Frozen.IsZero() {
		return p.Applied
	}
	return p.Frozen
}
