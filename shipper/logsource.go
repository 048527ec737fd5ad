package shipper

import (
	"fmt"

	"github.com/drfs-project/drfs/tracker"
)

// LogSource is a *tracker.Log seen as a Source and a Rotator.
type LogSource struct {
	log *tracker.Log
	bs  int
}

var (
	_ Source  = (*LogSource)(nil)
	_ Rotator = (*LogSource)(nil)
	_ Rotator = (*tracker.Log)(nil)
)

// FromLog adapts l. blockSize is the block size l was opened with
// (tracker.Options.BlockSize; 0 means the tracker's default, 4096). The
// shipper checks it against every data record it reads.
func FromLog(l *tracker.Log, blockSize int) *LogSource {
	if blockSize == 0 {
		blockSize = 4096
	}
	return &LogSource{log: l, bs: blockSize}
}

// Frozen returns the frozen generations of vm, ascending.
func (s *LogSource) Frozen(vm string) []uint64 { return s.log.Frozen(vm) }

// ReadGeneration reads the records of a frozen generation.
func (s *LogSource) ReadGeneration(vm string, gen uint64, fn func(tracker.Record) error) error {
	return s.log.ReadGeneration(vm, gen, fn)
}

// Drop deletes a frozen generation.
func (s *LogSource) Drop(vm string, gen uint64) error { return s.log.Drop(vm, gen) }

// VMs returns the VMs of the log.
func (s *LogSource) VMs() []string { return s.log.VMs() }

// Rotate freezes the active generation of vm.
func (s *LogSource) Rotate(vm string) (uint64, error) { return s.log.Rotate(vm) }

// Generation describes a frozen generation from the log's status. The log
// records when each generation started; a generation was frozen when the
// one after it started (Rotate starts the next generation, then freezes).
func (s *LogSource) Generation(vm string, gen uint64) (Generation, error) {
	for _, st := range s.log.Status() {
		if st.Name != vm {
			continue
		}
		for i, g := range st.Generations {
			if g.Gen != gen {
				continue
			}
			if !g.Frozen {
				break
			}
			info := Generation{Frozen: g.Created, BlockSize: s.bs}
			if i+1 < len(st.Generations) {
				info.Frozen = st.Generations[i+1].Created
			}
			for _, d := range g.Disks {
				info.Disks = append(info.Disks, DiskChange{Name: d.Disk, Size: d.Size, Removed: d.Removed})
			}
			return info, nil
		}
		return Generation{}, fmt.Errorf("shipper: VM %s has no frozen generation %d in the change log: %w", vm, gen, tracker.ErrGeneration)
	}
	return Generation{}, fmt.Errorf("shipper: VM %s is not in the change log: %w", vm, tracker.ErrUnknownVM)
}
