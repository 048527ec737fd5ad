package tracker_test

import (
	drfsfs "github.com/drfs-project/drfs/fs"
	"github.com/drfs-project/drfs/tracker"
)

// *tracker.Disk is what fs records a disk's changes into.
var _ drfsfs.DiskRecorder = (*tracker.Disk)(nil)
