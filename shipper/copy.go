package shipper

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/tracker"
)

// ShipCopy ships frozen generation gen of vm, its newest, with the disks
// in files (name → path of the disk image) sent whole from their files
// instead of as the log's records, and commits the point as kind. It is how
// a disk reaches the target the first time (initial replication) and how
// it is repaired when its tracking was lost (resynchronization by copy).
//
// The files are read while the VM runs, after the cut of gen, so point gen
// holds a fuzzy copy of them; that is why its kind is not KindGeneration.
// Every write that lands during the copy is logged in the next generation,
// so the first point whose cut comes after ShipCopy returns is consistent.
// ShipCopyDisks with a View taken at the cut of gen (a snapshot) makes a
// consistent point instead: target.KindSnapshot.
//
// Holes and all-zero blocks travel as zero extents.
func (s *Shipper) ShipCopy(ctx context.Context, vm string, gen uint64, files map[string]string, kind target.PointKind) (Stats, error) {
	disks := make(map[string]CopyDisk, len(files))
	for name, path := range files {
		disks[name] = CopyDisk{Path: path}
	}
	return s.ShipCopyDisks(ctx, vm, gen, disks, kind)
}

// CopyDisk is how ShipCopyDisks sends one disk from its file.
type CopyDisk struct {
	// Path is the disk's image file.
	Path string
	// View, if set, is read instead of Path: a point-in-time view of the
	// disk (a snapshot taken at the cut of the generation the copy rides
	// on), which makes the copy consistent rather than fuzzy.
	View DiskView
	// Partial sends only Ranges of the file (byte ranges, in order, not
	// overlapping: what resync.Diff found different from point Against);
	// the rest of the disk keeps the replica's contents. Otherwise the
	// whole file is sent.
	Partial bool
	Ranges  []target.Extent
	Against uint64
	// Only, for a Partial copy whose Ranges are still to be found, limits
	// the comparison that finds them to these byte ranges (the disk's hot
	// extents after a crash of the host, see resync.Options.Only); nil
	// compares the whole disk.
	Only []target.Extent
}

// DiskView is a disk to copy from other than a file: a snapshot's view.
// Reads past Size return io.EOF or zeros; Extents lists the allocated
// byte ranges in order (the rest reads as zeros), so that holes cost
// nothing.
type DiskView interface {
	io.ReaderAt
	Size() int64
	Extents() ([]target.Extent, error)
}

// ErrStaleRanges is the error of ShipCopyDisks when the target's newest
// point is no longer the one a disk's ranges were compared against (a
// generation was shipped since): compare again. It is permanent.
var ErrStaleRanges = errors.New("the ranges were compared against another point than the target's newest")

// ShipCopyDisks is ShipCopy with a choice per disk: sent whole, or only
// the ranges of its file that differ from the replica (resynchronization
// by chunks, see package resync). The differing chunks travel as any
// generation does: in frame streams, staged and committed all or nothing.
//
// A partial disk's stream applies on the target's newest point, which must
// be Against when the ship starts (else ErrStaleRanges and nothing is
// shipped). Besides Ranges, it sends from the file every block that the
// log's frozen generations after Against, up to gen, changed: the
// generations before gen are shipped from the log first, and gen's own
// records give way to the file, so a block written after the comparison
// reaches the replica as the file holds it. That is sound if every write
// since the comparison began is in the log (see resync.Diff). A disk the
// newest point does not hold, or that those generations removed, is sent
// whole.
func (s *Shipper) ShipCopyDisks(ctx context.Context, vm string, gen uint64, disks map[string]CopyDisk, kind target.PointKind) (Stats, error) {
	if frozen := s.src.Frozen(vm); len(frozen) == 0 || frozen[len(frozen)-1] != gen {
		return Stats{}, fmt.Errorf("shipper: a copy of %s must ride on its newest frozen generation, not %d", vm, gen)
	}
	cs := &copySource{Source: s.src, store: s.store, ctx: ctx, vm: vm, gen: gen, disks: disks,
		sizes: map[string]int64{}, kind: kind, whole: map[string]bool{}, logged: map[string][]target.Extent{}}
	for name, d := range disks {
		if d.Partial {
			if err := checkRanges(d.Ranges); err != nil {
				return Stats{}, permanent(fmt.Errorf("shipper: copying %s/%s: %w", vm, name, err))
			}
			cs.partial = true
		} else {
			cs.whole[name] = true
		}
		if d.View != nil {
			cs.sizes[name] = d.View.Size()
			continue
		}
		st, err := os.Stat(d.Path)
		if err != nil {
			return Stats{}, fmt.Errorf("shipper: copying %s/%s: %w", vm, name, err)
		}
		cs.sizes[name] = st.Size()
	}
	return s.ship(ctx, vm, cs, 0)
}

func checkRanges(rs []target.Extent) error {
	var end int64
	for i, e := range rs {
		if e.Off < end || e.Len <= 0 || e.Off > math.MaxInt64-e.Len {
			return fmt.Errorf("range %d [%d, +%d) is empty, out of order or overlapping", i, e.Off, e.Len)
		}
		end = e.Off + e.Len
	}
	return nil
}

// copySource is a Source whose generation gen of vm has the disks in disks
// read from their files; every other generation and disk comes from the
// log as is.
type copySource struct {
	Source
	store target.Store
	ctx   context.Context // of the ShipCopyDisks call, for the store's points
	vm    string
	gen   uint64
	disks map[string]CopyDisk
	sizes map[string]int64 // taken once: every read of the generation agrees on them
	kind  target.PointKind

	// Partial disks are prepared once, when ship asks for the frozen
	// generations under the VM's lock; read-only afterwards.
	partial bool
	once    sync.Once
	prepErr error
	whole   map[string]bool            // disks sent whole
	logged  map[string][]target.Extent // partial disks: byte ranges the log's generations after Against changed
}

func (c *copySource) ours(vm string, gen uint64) bool { return vm == c.vm && gen == c.gen }

// Frozen is called by ship before anything is sent, with the VM's lock
// held, so no other ship of the VM moves the target's newest point or
// drops generations while the partial disks are prepared.
func (c *copySource) Frozen(vm string) []uint64 {
	if vm == c.vm && c.partial {
		c.once.Do(func() { c.prepErr = c.prepare() })
	}
	return c.Source.Frozen(vm)
}

// prepare checks that the target's newest point is the one the ranges of
// each partial disk were compared against, and gathers the blocks the
// log's frozen generations after it changed.
func (c *copySource) prepare() error {
	points, err := c.store.Points(c.ctx, c.vm)
	if err != nil && !errors.Is(err, target.ErrNotFound) {
		return fmt.Errorf("shipper: listing the points of %s: %w", c.vm, err)
	}
	var newest *target.Point
	if len(points) > 0 {
		newest = &points[len(points)-1]
		if newest.Generation >= c.gen {
			return nil // committed already (ship commits it again), or out of order (ship says so)
		}
	}
	var from uint64 = math.MaxUint64
	for _, name := range slices.Sorted(maps.Keys(c.disks)) {
		d := c.disks[name]
		if !d.Partial {
			continue
		}
		if newest == nil || newest.Generation != d.Against {
			at := "no point"
			if newest != nil {
				at = fmt.Sprintf("point %d", newest.Generation)
			}
			return permanent(fmt.Errorf("shipper: copying %s/%s: %w: compared against point %d, the target has %s",
				c.vm, name, ErrStaleRanges, d.Against, at))
		}
		if !slices.ContainsFunc(newest.Disks, func(di target.DiskInfo) bool { return di.Name == name }) {
			c.whole[name] = true
			continue
		}
		from = min(from, d.Against)
	}
	for _, g := range c.Source.Frozen(c.vm) {
		if g <= from || g > c.gen {
			continue
		}
		info, err := c.Source.Generation(c.vm, g)
		if err != nil {
			return err
		}
		bs := int64(info.BlockSize)
		err = c.Source.ReadGeneration(c.vm, g, func(r tracker.Record) error {
			d, ok := c.disks[r.Disk]
			if !ok || c.whole[r.Disk] || !d.Partial {
				return nil
			}
			switch r.Kind {
			case tracker.KindRemoved:
				c.whole[r.Disk] = true
				delete(c.logged, r.Disk)
			case tracker.KindData, tracker.KindZero:
				c.logged[r.Disk] = append(c.logged[r.Disk], target.Extent{Off: int64(r.Block) * bs, Len: int64(r.Blocks) * bs})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("shipper: reading %s generation %d: %w", c.vm, g, err)
		}
	}
	return nil
}

func (c *copySource) Generation(vm string, gen uint64) (Generation, error) {
	if vm == c.vm && c.prepErr != nil {
		return Generation{}, c.prepErr
	}
	g, err := c.Source.Generation(vm, gen)
	if err != nil || !c.ours(vm, gen) {
		return g, err
	}
	// The log's records of the copied disks give way to the copies, which
	// come after the other disks.
	g.Disks = slices.DeleteFunc(g.Disks, func(d DiskChange) bool { _, ok := c.disks[d.Name]; return ok && !d.Removed })
	for _, name := range slices.Sorted(maps.Keys(c.disks)) {
		g.Disks = append(g.Disks, DiskChange{Name: name, Size: c.sizes[name]})
	}
	g.Kind = c.kind
	return g, nil
}

func (c *copySource) ReadGeneration(vm string, gen uint64, fn func(tracker.Record) error) error {
	if !c.ours(vm, gen) {
		return c.Source.ReadGeneration(vm, gen, fn)
	}
	if c.prepErr != nil {
		return c.prepErr
	}
	err := c.Source.ReadGeneration(vm, gen, func(r tracker.Record) error {
		if _, ok := c.disks[r.Disk]; ok && r.Kind != tracker.KindRemoved {
			return nil
		}
		return fn(r)
	})
	if err != nil {
		return err
	}
	info, err := c.Source.Generation(vm, gen)
	if err != nil {
		return err
	}
	for _, name := range slices.Sorted(maps.Keys(c.disks)) {
		d := c.disks[name]
		r, extents, closeFn, oerr := d.open()
		if oerr != nil {
			return fmt.Errorf("copying %s/%s: %w", vm, name, oerr)
		}
		if c.whole[name] {
			err = readFileRecords(r, extents, name, c.sizes[name], info.BlockSize, fn)
		} else {
			ranges := append(slices.Clone(d.Ranges), c.logged[name]...)
			err = readRangeRecords(r, name, c.sizes[name], info.BlockSize, ranges, fn)
		}
		closeFn()
		if err != nil {
			return fmt.Errorf("copying %s/%s: %w", vm, name, err)
		}
	}
	return nil
}

// open returns what to read the disk from, the function that lists its
// allocated extents, and the function that releases the reader.
func (d CopyDisk) open() (io.ReaderAt, func() ([]target.Extent, error), func(), error) {
	if d.View != nil {
		return d.View, d.View.Extents, func() {}, nil
	}
	f, err := os.Open(d.Path)
	if err != nil {
		return nil, nil, nil, err
	}
	return f, func() ([]target.Extent, error) { return fileExtents(f) }, func() { f.Close() }, nil
}

// fileExtents lists the allocated byte ranges of f (SEEK_DATA/SEEK_HOLE).
func fileExtents(f *os.File) ([]target.Extent, error) {
	var out []target.Extent
	for off := int64(0); ; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return out, nil // only a hole is left
		}
		if err != nil {
			return nil, err
		}
		end, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		out = append(out, target.Extent{Off: data, Len: end - data})
		off = end
	}
}

// readRangeRecords reports the blocks of the file at path that ranges
// (byte ranges, in any order) touch, below size, as log records of disk:
// data for blocks holding a non-zero byte, zero extents for the others,
// then the size. The blocks it does not report keep the replica's contents.
func readRangeRecords(f io.ReaderAt, disk string, size int64, bs int, ranges []target.Extent, fn func(tracker.Record) error) error {
	bsz := int64(bs)
	end := (size + bsz - 1) / bsz * bsz
	var blocks []target.Extent // whole blocks, merged
	slices.SortFunc(ranges, func(a, b target.Extent) int { return cmp.Compare(a.Off, b.Off) })
	for _, r := range ranges {
		from, to := r.Off/bsz*bsz, min((r.Off+r.Len+bsz-1)/bsz*bsz, end)
		if from >= to {
			continue
		}
		if k := len(blocks) - 1; k >= 0 && blocks[k].Off+blocks[k].Len >= from {
			blocks[k].Len = max(blocks[k].Len, to-blocks[k].Off)
			continue
		}
		blocks = append(blocks, target.Extent{Off: from, Len: to - from})
	}
	chunk := max(copyChunk/bsz, 1) * bsz
	buf := make([]byte, chunk)
	for _, b := range blocks {
		for pos := b.Off; pos < b.Off+b.Len; {
			n := min(chunk, b.Off+b.Len-pos)
			got, err := f.ReadAt(buf[:n], pos)
			if err != nil && err != io.EOF {
				return err
			}
			clear(buf[got:n]) // the file shrank under the copy: the log has the rest
			if err := blockRecords(buf[:n], disk, uint64(pos/bsz), bsz, fn); err != nil {
				return err
			}
			pos += n
		}
	}
	return fn(tracker.Record{Disk: disk, Kind: tracker.KindSize, Size: size})
}

// copyChunk is how much of a disk file is read at once.
const copyChunk = 1 << 20

// readFileRecords reports the first size bytes of f as log records of
// disk: data for blocks holding a non-zero byte, zero extents for holes
// (outside what extents lists) and zero blocks, then the size.
func readFileRecords(f io.ReaderAt, extents func() ([]target.Extent, error), disk string, size int64, bs int, fn func(tracker.Record) error) error {
	exts, err := extents()
	if err != nil {
		return err
	}
	bsz := int64(bs)
	nblocks := uint64((size + bsz - 1) / bsz)
	chunk := max(copyChunk/bsz, 1) * bsz
	buf := make([]byte, chunk)
	zero := func(from, to uint64) error {
		if to <= from {
			return nil
		}
		return fn(tracker.Record{Disk: disk, Kind: tracker.KindZero, Block: from, Blocks: to - from})
	}
	var next uint64 // first block not reported yet
	for _, e := range exts {
		start := max(e.Off/bsz*bsz, int64(next)*bsz)
		end := min((e.Off+e.Len+bsz-1)/bsz*bsz, (size+bsz-1)/bsz*bsz)
		if start >= end {
			continue
		}
		if err := zero(next, uint64(start/bsz)); err != nil {
			return err
		}
		for pos := start; pos < end; {
			n := min(chunk, end-pos)
			got, err := f.ReadAt(buf[:n], pos)
			if err != nil && err != io.EOF {
				return err
			}
			clear(buf[got:n]) // the file shrank under the copy: the log has the rest
			if err := blockRecords(buf[:n], disk, uint64(pos/bsz), bsz, fn); err != nil {
				return err
			}
			pos += n
		}
		next = uint64(end / bsz)
	}
	if err := zero(next, nblocks); err != nil {
		return err
	}
	return fn(tracker.Record{Disk: disk, Kind: tracker.KindSize, Size: size})
}

// blockRecords splits whole blocks of buf, starting at block first, into
// runs of data and of zeros.
func blockRecords(buf []byte, disk string, first uint64, bs int64, fn func(tracker.Record) error) error {
	n := uint64(int64(len(buf)) / bs)
	isZero := func(i uint64) bool { return zero.Is(buf[int64(i)*bs : int64(i+1)*bs]) }
	for i := uint64(0); i < n; {
		j := i + 1
		z := isZero(i)
		for j < n && isZero(j) == z {
			j++
		}
		r := tracker.Record{Disk: disk, Block: first + i, Blocks: j - i}
		if z {
			r.Kind = tracker.KindZero
		} else {
			r.Kind = tracker.KindData
			r.Data = buf[int64(i)*bs : int64(j)*bs]
		}
		if err := fn(r); err != nil {
			return err
		}
		i = j
	}
	return nil
}

// FileView is a disk image file seen as a DiskView, for callers that wrap
// the reads of a copy (to count its progress, say).
type FileView struct {
	f    *os.File
	size int64
}

var _ DiskView = (*FileView)(nil)

// OpenFileView opens the image at path; its size is taken now.
func OpenFileView(path string) (*FileView, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &FileView{f: f, size: st.Size()}, nil
}

// ReadAt reads the file.
func (v *FileView) ReadAt(p []byte, off int64) (int, error) { return v.f.ReadAt(p, off) }

// Size returns the file's size when it was opened.
func (v *FileView) Size() int64 { return v.size }

// Extents lists the file's allocated byte ranges.
func (v *FileView) Extents() ([]target.Extent, error) { return fileExtents(v.f) }

// Close closes the file.
func (v *FileView) Close() error { return v.f.Close() }
