package agent

import (
	"context"
	"fmt"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/shipper"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// Mount is the tracking mount as the agent and a replication use it: to
// hold a VM's writes for an instant (a cut, a planned failover), to take
// the snapshot an initial copy reads, and to know whether it still
// serves. FSMount is the FUSE mount's; tests use a mount of their own.
type Mount interface {
	// QuiescePaths holds the writes to paths (VM folders or disks,
	// relative to the source, slash separated) until release is called:
	// the writes in flight on them have finished and been recorded in
	// the change log when it returns, and new ones wait. It fails when
	// ctx ends first or the mount is stopping (an error matching
	// fs.ErrClosed); then nothing is held.
	QuiescePaths(ctx context.Context, paths []string) (release func(), err error)
	// Snapshot starts a point-in-time image of disks (relative to the
	// source), keeping what it needs in files in dir. Take it while
	// QuiescePaths holds the disks, so that it is the instant of the hold
	// for all of them.
	Snapshot(disks []string, dir string) (Snapshot, error)
	// Stopped reports whether the mount no longer serves: no write can
	// land on the disks through it any more.
	Stopped() bool
}

// Snapshot is a point-in-time image of disks that Mount.Snapshot took.
type Snapshot interface {
	// View reads disk rel (as given to Mount.Snapshot) as it was. A view
	// fails once the snapshot cannot keep the image (it is deleted, or
	// saving a before-image failed).
	View(rel string) (shipper.DiskView, error)
	// Bytes is the space its files take.
	Bytes() int64
	// Delete ends the snapshot; the caller removes its directory.
	Delete() error
}

// FSMount is the Mount of a FUSE mount of package fs.
func FSMount(srv *drfsfs.Server) Mount { return fsMount{srv} }

type fsMount struct{ *drfsfs.Server }

func (m fsMount) Snapshot(disks []string, dir string) (Snapshot, error) {
	s, err := m.Server.Snapshot(disks, dir)
	if err != nil {
		return nil, err
	}
	return fsSnapshot{s}, nil
}

type fsSnapshot struct{ *drfsfs.Snapshot }

func (s fsSnapshot) View(rel string) (shipper.DiskView, error) {
	v, err := s.Snapshot.View(rel)
	if err != nil {
		return nil, err
	}
	return snapshotView{v}, nil
}

// snapshotView is a disk of a snapshot as the shipper reads it.
type snapshotView struct{ *drfsfs.View }

func (v snapshotView) Extents() ([]target.Extent, error) {
	exts, err := v.View.Extents()
	out := make([]target.Extent, len(exts))
	for i, e := range exts {
		out[i] = target.Extent{Off: e.Off, Len: e.Len}
	}
	return out, err
}

// checkOutside looks for the disks of vm changed behind the mount's back
// since the last check (tracker.Log.CheckOutside), with the VM's changes
// through the mount m held for the instant, so that each of them has been
// reported. After the mount stopped (or without one) nothing needs
// holding. It is the check of a cut: call it after the VM's Rotate, before
// the generation is shipped. covered is as for tracker.Log.CheckOutside.
// It returns the disks it flagged; an error if the changes could not be
// held (the mount is being unmounted, ctx ended), and then checks nothing:
// the next check covers this interval too.
func checkOutside(ctx context.Context, m Mount, log *tracker.Log, vm string, covered func(disk string) bool) ([]tracker.OutsideChange, error) {
	if m != nil && !m.Stopped() {
		release, err := m.QuiescePaths(ctx, []string{vm})
		if err != nil {
			return nil, fmt.Errorf("holding the writes of %s to check its disks: %w", vm, err)
		}
		defer release()
	}
	return log.CheckOutside(vm, covered), nil
}
