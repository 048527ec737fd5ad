// Package tracked wires a tracker.Log to the fs mount: it adapts the change
// log to the fs.Recorder contract, which fs defines and the tracker meets
// without importing fs.
package tracked

import (
	"context"
	"fmt"

	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/tracker"
)

// Recorder returns log as an fs.Recorder.
func Recorder(log *tracker.Log) drfsfs.Recorder { return recorder{log} }

type recorder struct{ log *tracker.Log }

func (r recorder) OpenDisk(rel string, size int64) (drfsfs.DiskRecorder, error) {
	d, err := r.log.OpenDisk(rel, size)
	if err != nil || d == nil {
		// A nil *tracker.Disk must become a nil interface, not a typed nil.
		return nil, err
	}
	return d, nil
}

func (r recorder) Renamed(from, to string) { r.log.Renamed(from, to) }
func (r recorder) Removed(rel string)      { r.log.Removed(rel) }

// CheckOutside looks for the disks of vm changed behind the mount's back
// since the last check (tracker.Log.CheckOutside), with the VM's changes
// through the mount srv held for the instant, so that each of them has
// been reported. After the mount stopped (or without one) nothing needs
// holding. It is the check of a cut: call it after the VM's Rotate, before
// the generation is shipped. covered is as for tracker.Log.CheckOutside.
// It returns the disks it flagged; an error if the changes could not be
// held (the mount is being unmounted, ctx ended), and then checks nothing:
// the next check covers this interval too.
func CheckOutside(ctx context.Context, srv *drfsfs.Server, log *tracker.Log, vm string, covered func(disk string) bool) ([]tracker.OutsideChange, error) {
	if srv != nil && !srv.Stopped() {
		release, err := srv.QuiescePaths(ctx, []string{vm})
		if err != nil {
			return nil, fmt.Errorf("holding the writes of %s to check its disks: %w", vm, err)
		}
		defer release()
	}
	return log.CheckOutside(vm, covered), nil
}
