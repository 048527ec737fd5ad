package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"golang.org/x/sys/unix"

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
//
// Holes and all-zero blocks travel as zero extents.
func (s *Shipper) ShipCopy(ctx context.Context, vm string, gen uint64, files map[string]string, kind target.PointKind) (Stats, error) {
	if frozen := s.src.Frozen(vm); len(frozen) == 0 || frozen[len(frozen)-1] != gen {
		return Stats{}, fmt.Errorf("shipper: a copy of %s must ride on its newest frozen generation, not %d", vm, gen)
	}
	cs := &copySource{Source: s.src, vm: vm, gen: gen, files: files, sizes: map[string]int64{}, kind: kind}
	for name, path := range files {
		st, err := os.Stat(path)
		if err != nil {
			return Stats{}, fmt.Errorf("shipper: copying %s/%s: %w", vm, name, err)
		}
		cs.sizes[name] = st.Size()
	}
	return s.ship(ctx, vm, cs)
}

// copySource is a Source whose generation gen of vm has the disks in files
// read from their files; every other generation and disk comes from the
// log as is.
type copySource struct {
	Source
	vm    string
	gen   uint64
	files map[string]string
	sizes map[string]int64 // taken once: every read of the generation agrees on them
	kind  target.PointKind
}

func (c *copySource) ours(vm string, gen uint64) bool { return vm == c.vm && gen == c.gen }

func (c *copySource) Generation(vm string, gen uint64) (Generation, error) {
	g, err := c.Source.Generation(vm, gen)
	if err != nil || !c.ours(vm, gen) {
		return g, err
	}
	// The log's records of the copied disks give way to the copies, which
	// come after the other disks.
	g.Disks = slices.DeleteFunc(g.Disks, func(d DiskChange) bool { _, ok := c.files[d.Name]; return ok && !d.Removed })
	for _, name := range slices.Sorted(maps.Keys(c.files)) {
		g.Disks = append(g.Disks, DiskChange{Name: name, Size: c.sizes[name]})
	}
	g.Kind = c.kind
	return g, nil
}

func (c *copySource) ReadGeneration(vm string, gen uint64, fn func(tracker.Record) error) error {
	if !c.ours(vm, gen) {
		return c.Source.ReadGeneration(vm, gen, fn)
	}
	err := c.Source.ReadGeneration(vm, gen, func(r tracker.Record) error {
		if _, ok := c.files[r.Disk]; ok && r.Kind != tracker.KindRemoved {
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
	for _, name := range slices.Sorted(maps.Keys(c.files)) {
		if err := readFileRecords(c.files[name], name, c.sizes[name], info.BlockSize, fn); err != nil {
			return fmt.Errorf("copying %s/%s: %w", vm, name, err)
		}
	}
	return nil
}

// copyChunk is how much of a disk file is read at once.
const copyChunk = 1 << 20

// readFileRecords reports the first size bytes of the file at path as log
// records of disk: data for blocks holding a non-zero byte, zero extents
// for holes and zero blocks, then the size.
func readFileRecords(path, disk string, size int64, bs int, fn func(tracker.Record) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
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
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return err
		}
		start := data / bsz * bsz
		if start >= size {
			break
		}
		if err := zero(next, uint64(start/bsz)); err != nil {
			return err
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		end = min((end+bsz-1)/bsz*bsz, (size+bsz-1)/bsz*bsz)
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
		off = end
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
	isZero := func(i uint64) bool { return allZero(buf[int64(i)*bs : int64(i+1)*bs]) }
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

var zeroBlock [64 << 10]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
