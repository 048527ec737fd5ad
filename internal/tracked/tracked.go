// Package tracked wires a tracker.Log to the fs mount: it adapts the change
// log to the fs.Recorder contract, which fs defines and the tracker meets
// without importing fs.
package tracked

import (
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

// The change log keeps the changes in flight and hears of metadata changes.
var (
	_ drfsfs.InFlightRecorder = (*tracker.Disk)(nil)
	_ drfsfs.MetadataRecorder = (*tracker.Disk)(nil)
)
