package shipper

import (
	"fmt"
	"io"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/tracker"
)

// diskPlan is what the shipper sends of one changed disk of a generation.
type diskPlan struct {
	name string
	size int64
	base uint64 // Header.Base: the target's newest point, or 0 for a disk new to it
	// fill: the disk was removed and created again in the generation, but
	// the target knows the old one, so the stream covers every block the
	// records leave out with zeros rather than inherit the old contents.
	fill bool
}

// diskEncoder turns the records of one disk into a frame stream. The frame
// block size is the log's, capped at frame.MaxBlockSize; a larger log block
// is several frame blocks.
type diskEncoder struct {
	w       *frame.Writer
	disk    string
	tbs     int64  // log block size
	k       uint64 // frame blocks per log block
	fbs     int64  // frame block size
	size    int64
	nblocks uint64 // frame blocks of the disk
	fill    bool
	next    uint64 // frame block after the last record
}

// frameBlockSize is the block size of the streams for a log block size.
func frameBlockSize(logBS int) int { return min(logBS, frame.MaxBlockSize) }

func newDiskEncoder(w io.Writer, vm string, gen uint64, info *Generation, p *diskPlan, raw bool) (*diskEncoder, error) {
	fbs := frameBlockSize(info.BlockSize)
	h := frame.Header{
		Kind:       frame.StreamGeneration,
		VM:         vm,
		Disk:       p.name,
		Generation: gen,
		Base:       p.base,
		BlockSize:  fbs,
		DiskSize:   uint64(p.size),
		// The cut, not the time of encoding: a stream sent again is the
		// same bytes.
		Created: info.Frozen,
	}
	fw, err := frame.NewWriter(w, h)
	if err != nil {
		return nil, permanent(err)
	}
	if raw {
		fw.SetRaw()
	}
	return &diskEncoder{
		w:       fw,
		disk:    p.name,
		tbs:     int64(info.BlockSize),
		k:       uint64(info.BlockSize / fbs),
		fbs:     int64(fbs),
		size:    p.size,
		nblocks: h.Blocks(),
		fill:    p.fill,
	}, nil
}

// add encodes one record. It reports done after the disk's size record,
// which closes the stream. Errors that are the records' fault are
// permanent; the others come from the writer underneath.
func (e *diskEncoder) add(r tracker.Record) (done bool, err error) {
	switch r.Kind {
	case tracker.KindData:
		if int64(len(r.Data)) != int64(r.Blocks)*e.tbs || r.Blocks == 0 {
			return false, permanent(fmt.Errorf("disk %s: data record of %d blocks at block %d has %d bytes, not whole blocks of %d: the log's block size is not %d",
				e.disk, r.Blocks, r.Block, len(r.Data), e.tbs, e.tbs))
		}
		off := int64(r.Block) * e.tbs
		if off >= e.size {
			return false, nil // past the end: the size cuts it away
		}
		data := r.Data[:min(int64(len(r.Data)), e.size-off)]
		fb := r.Block * e.k
		if err := e.gap(fb); err != nil {
			return false, err
		}
		if err := e.w.Data(fb, data); err != nil {
			return false, err
		}
		e.next = fb + uint64((int64(len(data))+e.fbs-1)/e.fbs)
	case tracker.KindZero:
		fb, n := r.Block*e.k, r.Blocks*e.k
		if fb >= e.nblocks || n == 0 {
			return false, nil
		}
		n = min(n, e.nblocks-fb)
		if err := e.gap(fb); err != nil {
			return false, err
		}
		if err := e.w.Zero(fb, n); err != nil {
			return false, err
		}
		e.next = fb + n
	case tracker.KindSize:
		if r.Size != e.size {
			return false, permanent(fmt.Errorf("disk %s: the log's size record says %d bytes, the generation's description %d", e.disk, r.Size, e.size))
		}
		if err := e.gap(e.nblocks); err != nil {
			return false, err
		}
		return true, e.w.Close()
	default:
		return false, permanent(fmt.Errorf("disk %s: unexpected %v record", e.disk, r.Kind))
	}
	return false, nil
}

// gap zeroes the blocks from the last record up to block fb of a disk
// that must not inherit its old contents.
func (e *diskEncoder) gap(fb uint64) error {
	if !e.fill || fb <= e.next {
		return nil
	}
	return e.w.Zero(e.next, fb-e.next)
}

func (e *diskEncoder) stats() frame.Stats { return e.w.Stats() }
