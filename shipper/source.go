package shipper

import (
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// Source is the change log as the shipper sees it. FromLog adapts a
// *tracker.Log.
//
// A frozen generation never changes (invariant 4), so every read of it
// gives the same records. All methods are safe for concurrent use; the
// shipper reads one generation at most twice at a time (the second to
// resend one disk's stream) and calls Drop only when no read of that VM is
// in progress.
type Source interface {
	// Frozen returns the frozen generations of vm that were not dropped,
	// ascending. An unknown VM has none.
	Frozen(vm string) []uint64

	// Generation describes frozen generation gen of vm. A generation that
	// is not frozen, or gone, is an error wrapping tracker.ErrGeneration.
	Generation(vm string, gen uint64) (Generation, error)

	// ReadGeneration calls fn with the records of frozen generation gen of
	// vm: disk by disk, each disk's data and zero records in ascending
	// block order, then its size record (or a single removal record).
	// Record.Data holds whole blocks and is valid only during the call. An
	// error from fn stops the read and is returned as is.
	ReadGeneration(vm string, gen uint64, fn func(tracker.Record) error) error

	// Drop deletes frozen generation gen of vm from the log. The shipper
	// calls it only after the target acknowledged the generation durable.
	// Dropping a generation that is already gone returns an error wrapping
	// tracker.ErrGeneration, which the shipper takes as success.
	Drop(vm string, gen uint64) error
}

// Rotator freezes generations; Loop calls it every interval. *tracker.Log
// is one.
type Rotator interface {
	// VMs returns the VMs of the log, sorted.
	VMs() []string
	// Rotate freezes the active generation of vm, atomically across its
	// disks, and returns its number.
	Rotate(vm string) (uint64, error)
}

// Generation describes one frozen generation.
type Generation struct {
	// Frozen is when the generation was frozen: the time of its cut.
	Frozen time.Time
	// BlockSize is the size of the blocks the records count, a power of
	// two of at least 512 bytes.
	BlockSize int
	// Disks are the disks with records in the generation, in the order
	// ReadGeneration reports them. A disk removed and created again in the
	// generation appears twice: removed, then with its new size.
	Disks []DiskChange
	// Kind is the kind of the point the generation makes on the target;
	// empty means target.KindGeneration.
	Kind target.PointKind
	// AppConsistent: an application-consistency hook succeeded around the
	// generation's cut; its point is marked so.
	AppConsistent bool
}

func (g Generation) kind() target.PointKind {
	if g.Kind == "" {
		return target.KindGeneration
	}
	return g.Kind
}

// DiskChange is what a generation did to one disk.
type DiskChange struct {
	Name    string
	Size    int64 // bytes, at the cut
	Removed bool  // the disk was removed from the source
}
