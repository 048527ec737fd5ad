package recovery

import (
	"context"
	"errors"
	"maps"
	"slices"

	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

// VerifyReport is what VerifyVM found (the JSON of drfs verify).
type VerifyReport struct {
	VM             string       `json:"vm"`
	Source         string       `json:"source"`
	Target         string       `json:"target"`
	Point          PointRef     `json:"point"`
	InSync         bool         `json:"in_sync"`
	Disks          []DiskVerify `json:"disks"`
	ChunksCompared int64        `json:"chunks_compared"`
	ChecksumBytes  int64        `json:"checksum_bytes"` // exchanged with the store
	Repair         string       `json:"repair,omitempty"`
}

// DiskVerify is one disk of a VerifyReport: of the point, of the
// source, or of both.
type DiskVerify struct {
	Name   string `json:"name"`
	InSync bool   `json:"in_sync"`
	// Missing is "source" for a disk of the point that the source lacks,
	// "point" for a disk of the source that the point lacks.
	Missing        string  `json:"missing,omitempty"`
	Size           int64   `json:"size"`       // on the source
	PointSize      int64   `json:"point_size"` // in the point
	BytesDiffering int64   `json:"bytes_differing"`
	ChunksCompared int64   `json:"chunks_compared"`
	Ranges         []Range `json:"ranges"` // of the source that differ from the point
}

// Range is a byte range of a disk.
type Range struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// VerifyVM compares every disk of vm in the source directory with point
// p of it on store, chunk by chunk where the replica lives (only checksums
// cross the network), and changes nothing. Disks the point lacks, or the
// source lacks, are named. The source must not change meanwhile.
func VerifyVM(ctx context.Context, store target.Store, url, vm, source string, p target.Point) (VerifyReport, error) {
	res := VerifyReport{VM: vm, Source: source, Target: RedactURL(url), Point: RefOf(p), InSync: true, Disks: []DiskVerify{}}
	disks := map[string]string{}
	sizes := map[string]int64{}
	WalkVM(source, vm, func(_, disk, path string, size int64) error {
		disks[disk], sizes[disk] = path, size
		return nil
	})
	for _, d := range p.Disks {
		path, ok := disks[d.Name]
		if !ok {
			res.Disks = append(res.Disks, DiskVerify{Name: d.Name, Missing: "source", PointSize: d.Size, Ranges: []Range{}})
			continue
		}
		delete(disks, d.Name)
		r, err := VerifyFile(ctx, store, vm, p.Generation, d.Name, path)
		if err != nil && !errors.Is(err, resync.ErrDiverged) {
			return res, err
		}
		vd := DiskVerify{Name: d.Name, InSync: r.InSync(), Size: r.Size, PointSize: r.TargetSize,
			BytesDiffering: r.SendBytes(), ChunksCompared: r.Compared(), Ranges: []Range{}}
		for _, e := range r.Ranges {
			vd.Ranges = append(vd.Ranges, Range{Offset: e.Off, Length: e.Len})
		}
		res.Disks = append(res.Disks, vd)
		res.ChunksCompared += r.Compared()
		res.ChecksumBytes += r.SumBytesUp + r.SumBytesDown
	}
	for _, name := range slices.Sorted(maps.Keys(disks)) {
		res.Disks = append(res.Disks, DiskVerify{Name: name, Missing: "point", Size: sizes[name], Ranges: []Range{}})
	}
	for _, d := range res.Disks {
		res.InSync = res.InSync && d.InSync
	}
	return res, nil
}
