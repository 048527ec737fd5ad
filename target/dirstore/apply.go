package dirstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"slices"

	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/target"
)

// This file is the data path of Commit: saving undo data, applying a staged
// stream to a replica, and putting the undo data back.

// loadStaged reads the staged record of d and opens its blocks file. A
// record or blocks file that is damaged or missing is ErrCorrupt (or
// fs.ErrNotExist): recovery then goes back rather than forward.
func (s *Store) loadStaged(vm string, gen uint64, d planDisk) (*staged, *os.File, error) {
	st, err := s.readStaged(vm, gen, d.Name)
	if errors.Is(err, errStagedCorrupt) {
		return nil, nil, fmt.Errorf("%w: %w", target.ErrCorrupt, err)
	}
	if err != nil {
		return nil, nil, err
	}
	if st.diskSize != d.Size {
		return nil, nil, fmt.Errorf("%w: staged %s: size %d, the commit's %d", target.ErrCorrupt, d.Name, st.diskSize, d.Size)
	}
	bf, err := s.openBlocks(vm, st)
	if err != nil {
		return nil, nil, err
	}
	if fi, err := bf.Stat(); err != nil || fi.Size() != st.blocksSize() {
		bf.Close()
		return nil, nil, fmt.Errorf("%w: blocks file of staged %s is not %d bytes", target.ErrCorrupt, d.Name, st.blocksSize())
	}
	return st, bf, nil
}

// writeUndo saves what applying the staged disk d would overwrite in its
// replica, and returns the stream's data bytes.
func (s *Store) writeUndo(vm string, gen uint64, d planDisk) (int64, error) {
	st, bf, err := s.loadStaged(vm, gen, d)
	if err != nil {
		return 0, err
	}
	defer bf.Close()

	var prevSize int64
	var flags uint16
	rep, err := s.root.Open(replicaPath(vm, d.Name))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		flags = undoAbsent
	case err != nil:
		return 0, err
	default:
		defer rep.Close()
		fi, err := rep.Stat()
		if err != nil {
			return 0, err
		}
		if !fi.Mode().IsRegular() {
			return 0, fmt.Errorf("replica %s is not a regular file", d.Name)
		}
		prevSize = fi.Size()
	}
	if d.Reset {
		flags |= undoReset
	}

	up := undoPath(vm, gen, d.Name)
	if err := s.mkdirAll(path.Dir(up)); err != nil {
		return 0, err
	}
	uf, err := s.root.OpenFile(up, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filePerm)
	if err != nil {
		return 0, err
	}
	defer uf.Close()
	w, err := newUndoWriter(uf, func() error { return s.fault("undo") }, gen, prevSize, flags)
	if err != nil {
		return 0, err
	}
	c := &capture{w: w, rep: rep, bs: st.blockSize}

	limit := min(prevSize, d.Size) // bytes of the replica the extents may overwrite
	if rep == nil || d.Reset {
		limit = 0
	}
	if rep != nil && d.Reset {
		if err := c.saveAll(0, prevSize); err != nil {
			return 0, err
		}
	}
	if err := c.saveExtents(st, bf, limit); err != nil {
		return 0, err
	}
	if rep != nil && !d.Reset && d.Size < prevSize {
		if err := c.saveAll(d.Size, prevSize); err != nil {
			return 0, err
		}
	}
	if err := w.finish(); err != nil {
		return 0, err
	}
	if err := uf.Close(); err != nil {
		return 0, err
	}
	if err := s.syncDir(path.Dir(up)); err != nil {
		return 0, err
	}
	return st.dataBytes, nil
}

// saveExtents saves the replica's bytes below limit that the extents of st
// overwrite: data extents block by block against the new bytes in the
// blocks file bf, zero extents where the replica is not zeros already.
func (c *capture) saveExtents(st *staged, bf *os.File, limit int64) error {
	var buf []byte
	seq := &seqReader{f: bf}
	err := st.each(func(e stagedExtent, at int64) error {
		if e.off >= limit {
			return errStop // extents come in order: the rest are past it too
		}
		end := min(e.off+e.len, limit)
		if e.zero {
			if err := c.flush(); err != nil {
				return err
			}
			return c.saveChanged(e.off, end)
		}
		for off := e.off; off < end; {
			n := min(end-off, saveChunk)
			var b []byte
			var err error
			if st.packed {
				b, err = seq.at(at+off-e.off, n)
			} else {
				buf = slices.Grow(buf[:0], int(n))[:n]
				b, err = buf, readFull(bf, buf, at+off-e.off)
			}
			if err == nil {
				err = c.addData(off, b)
			}
			if err != nil {
				return err
			}
			off += n
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.flush()
}

// saveChunk is the largest piece of a range saveAll and saveChanged save as
// one undo entry.
const saveChunk = 256 << 10

// capture saves the replica's bytes that records overwrite. Data records
// gather in runs, read from the replica in one go.
type capture struct {
	w   *undoWriter
	rep *os.File
	bs  int64

	// A run is the data extents of one span [runOff, runEnd) of the
	// replica, read in one go: extents separated by at most captureGap
	// share a read (scattered 4 KiB blocks would otherwise cost a pread
	// each, the most of a commit's time).
	runOff, runEnd int64
	run            []byte     // the new bytes of the run's extents, one after another
	pieces         []runPiece // where each extent is
	old            []byte

	// The replica is a hole in [holeFrom, holeEnd), as the last SEEK_DATA
	// found: a span inside it is zeros without a read. A thin disk filling
	// up is mostly holes, and reading a hole costs the kernel a zeroed
	// page per 4 KiB.
	holeFrom, holeEnd int64
	// unseeked is how many more runs are read without a SEEK_DATA first:
	// where the replica is data, asking costs a syscall per run and finds
	// nothing to skip. A run that reads as zeros asks again.
	unseeked int
}

// seekSkip is how many runs are read without a SEEK_DATA after one found
// data where its run starts.
const seekSkip = 32

// runPiece is one extent of a capture run: n new bytes at off in the
// replica, at at in capture.run.
type runPiece struct{ off, n, at int64 }

const (
	// captureGap is the widest gap between two extents that one read of
	// the replica spans: reading 16 KiB more costs about what another
	// pread does.
	captureGap = 16 << 10
	// captureSpan is the most one read of the replica covers.
	captureSpan = 1 << 20
)

func (c *capture) addData(off int64, data []byte) error {
	if len(c.pieces) > 0 && (off < c.runEnd || off-c.runEnd > captureGap || off+int64(len(data))-c.runOff > captureSpan) {
		if err := c.flush(); err != nil {
			return err
		}
	}
	if len(c.pieces) == 0 {
		c.runOff = off
	}
	c.pieces = append(c.pieces, runPiece{off: off, n: int64(len(data)), at: int64(len(c.run))})
	c.run = append(c.run, data...)
	c.runEnd = off + int64(len(data))
	return nil
}

// flush saves the old bytes of the run's blocks: none where they equal the
// new ones, a zero entry where they are zeros.
func (c *capture) flush() error {
	if len(c.pieces) == 0 {
		return nil
	}
	span := c.runEnd - c.runOff
	c.old = slices.Grow(c.old[:0], int(span))[:span]
	if c.inHole(c.runOff, c.runEnd) {
		clear(c.old)
	} else if err := readFull(c.rep, c.old, c.runOff); err != nil {
		return err
	} else if c.unseeked > 0 && zero.Is(c.old) {
		c.unseeked = 0 // holes again, perhaps long ones: ask
	}
	for _, p := range c.pieces {
		for i := int64(0); i < p.n; i += c.bs {
			j := min(i+c.bs, p.n)
			old := c.old[p.off-c.runOff+i : p.off-c.runOff+j]
			var err error
			switch {
			case bytes.Equal(old, c.run[p.at+i:p.at+j]):
			case zero.Is(old):
				err = c.w.zero(p.off+i, j-i)
			default:
				err = c.w.data(p.off+i, old)
			}
			if err != nil {
				return err
			}
		}
	}
	c.run, c.pieces = c.run[:0], c.pieces[:0]
	return nil
}

// inHole reports whether [off, end) of the replica is a hole.
func (c *capture) inHole(off, end int64) bool {
	if off >= c.holeFrom && end <= c.holeEnd {
		return true
	}
	if c.unseeked > 0 {
		c.unseeked--
		return false
	}
	at, ok := nextData(c.rep, off)
	switch {
	case !ok:
		return false
	case at < 0:
		at = math.MaxInt64 // holes to the end of the file
	case at <= off:
		c.unseeked = seekSkip
	}
	c.holeFrom, c.holeEnd = off, at
	return end <= at
}

// saveChanged saves the non-zero bytes of [off, end), which a zero extent
// overwrites: holes and zeros stay as they are.
func (c *capture) saveChanged(off, end int64) error {
	return c.walk(off, end, nil, func(at int64, b []byte) error {
		if zero.Is(b) {
			return nil
		}
		return c.w.data(at, b)
	})
}

// saveAll saves all of [off, end): a shrink or a disk started afresh.
func (c *capture) saveAll(off, end int64) error {
	return c.walk(off, end, func(at, n int64) error { return c.w.zero(at, n) }, func(at int64, b []byte) error {
		if zero.Is(b) {
			return c.w.zero(at, int64(len(b)))
		}
		return c.w.data(at, b)
	})
}

// walk calls hole for the holes of [off, end) of the replica and data for
// its data, in pieces of at most saveChunk.
func (c *capture) walk(off, end int64, hole func(at, n int64) error, data func(at int64, b []byte) error) error {
	exts, err := dataExtents(c.rep, off, end)
	if err != nil {
		return err
	}
	buf := make([]byte, saveChunk)
	pos := off
	for _, e := range append(exts, extent{end, 0}) {
		if e.off > pos && hole != nil {
			if err := hole(pos, e.off-pos); err != nil {
				return err
			}
		}
		for at := e.off; at < e.off+e.len; {
			n := min(saveChunk, e.off+e.len-at)
			if err := readFull(c.rep, buf[:n], at); err != nil {
				return err
			}
			if err := data(at, buf[:n]); err != nil {
				return err
			}
			at += n
		}
		pos = e.off + e.len
	}
	return nil
}

// applyDisk applies the staged disk d to its replica and syncs it. An
// image blocks file of a disk that starts afresh (new to the newest point,
// or without a replica) becomes the replica by a hard link; otherwise the
// data extents are copied into the replica in the kernel and the zero
// extents punched. Either way it is idempotent: applying again gives the
// same replica.
func (s *Store) applyDisk(vm string, gen uint64, d planDisk) error {
	st, bf, err := s.loadStaged(vm, gen, d)
	if err != nil {
		return err
	}
	defer bf.Close()
	rp := replicaPath(vm, d.Name)
	if err := s.mkdirAll(path.Dir(rp)); err != nil {
		return err
	}
	existed, err := s.exists(rp)
	if err != nil {
		return err
	}
	if !st.packed && (d.Reset || !existed) {
		return s.linkReplica(vm, gen, st, rp)
	}
	f, err := s.root.OpenFile(rp, os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return err
	}
	defer f.Close()
	if !existed {
		if err := s.syncDir(path.Dir(rp)); err != nil {
			return err
		}
	}
	w := &replicaWriter{s: s, f: f, bs: st.blockSize, op: "replica"}
	if d.Reset {
		if err := w.truncate(0); err != nil {
			return err
		}
	}
	if err := w.truncate(d.Size); err != nil {
		return err
	}
	partial := false
	seq := &seqReader{f: bf}
	err = st.each(func(e stagedExtent, at int64) error {
		var err error
		switch {
		case e.zero:
			err = w.punch(e.off, e.len)
		case st.packed && e.len < copyMin:
			var b []byte
			if b, err = seq.at(at, e.len); err == nil {
				err = w.write(e.off, b)
			}
		default:
			err = w.copyFrom(bf, at, e.off, e.len)
		}
		if err == nil && !partial && w.writes > 0 {
			partial = true
			s.step("apply " + d.Name + " partial")
		}
		return err
	})
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// copyMin is the shortest extent of a packed file that applyDisk copies
// with copy_file_range; shorter ones (scattered 4 KiB blocks) are read in
// large sequential pieces and written with one pwrite each, which costs
// less than a copy_file_range per block.
const copyMin = 64 << 10

// seqReader reads a file front to back through a 1 MiB buffer.
type seqReader struct {
	f   *os.File
	buf []byte
	off int64 // file offset of buf[0]
}

// at returns the n bytes at off, which must not be before those of the
// previous call.
func (r *seqReader) at(off, n int64) ([]byte, error) {
	if off < r.off || off+n > r.off+int64(len(r.buf)) {
		size := max(n, 1<<20)
		r.buf = slices.Grow(r.buf[:0], int(size))[:size]
		m, err := r.f.ReadAt(r.buf, off)
		r.buf, r.off = r.buf[:m], off
		if int64(m) < n {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return r.buf[off-r.off : off-r.off+n], nil
}

// linkReplica makes the blocks file of st the replica at rp: a hard link
// in tmp/, renamed over rp. The blocks file was synced by Stage. The
// staged record keeps naming the same file until the commit is published,
// so nothing may write to the replica before then (rollbackDisk replaces
// it rather than writing into it).
func (s *Store) linkReplica(vm string, gen uint64, st *staged, rp string) error {
	if err := s.fault("replica"); err != nil {
		return err
	}
	if err := s.mkdirAll(tmpDir(vm)); err != nil {
		return err
	}
	tmp := tmpDir(vm) + "/" + randomName(".link")
	if err := s.root.Link(blocksPath(vm, gen, st.blocks), tmp); err != nil {
		return err
	}
	if err := s.root.Rename(tmp, rp); err != nil {
		s.root.Remove(tmp)
		return err
	}
	return s.syncDir(path.Dir(rp))
}

// rollbackDisk puts back the bytes of d's replica from the undo data of gen.
func (s *Store) rollbackDisk(vm string, gen uint64, d planDisk) error {
	uf, err := s.root.Open(undoPath(vm, gen, d.Name))
	if err != nil {
		return err
	}
	defer uf.Close()
	u, err := loadUndo(uf)
	if err != nil {
		return err
	}
	rp := replicaPath(vm, d.Name)
	if u.flags&undoAbsent != 0 {
		if err := s.root.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		s.removeEmptyParents(rp, replicaDir(vm))
		return nil
	}
	if u.flags&undoReset != 0 {
		// The replica may be the staged blocks file (linkReplica), which a
		// retry applies again: put the old disk into a new file. The undo
		// data of a reset holds every byte of it.
		if err := s.root.Remove(rp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	f, err := s.root.OpenFile(rp, os.O_RDWR|os.O_CREATE, filePerm)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &replicaWriter{s: s, f: f, bs: 1, op: "rollback"}
	if err := w.truncate(u.prevSize); err != nil {
		return err
	}
	buf := make([]byte, maxUndoData)
	for i := range u.entries {
		e := &u.entries[i]
		if e.zero {
			err = w.punch(e.off, e.len)
		} else if b, perr := u.payload(e, buf); perr != nil {
			err = perr
		} else {
			err = w.write(e.off, b)
		}
		if err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// replicaWriter changes a replica, each change checked by the fault hook
// and counted.
type replicaWriter struct {
	s      *Store
	f      *os.File
	bs     int64
	op     string // fault injection kind
	writes int
}

func (w *replicaWriter) truncate(size int64) error {
	fi, err := w.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == size {
		return nil
	}
	if err := w.s.fault(w.op); err != nil {
		return err
	}
	w.writes++
	return w.f.Truncate(size)
}

func (w *replicaWriter) write(off int64, b []byte) error {
	if err := w.s.fault(w.op); err != nil {
		return err
	}
	w.writes++
	_, err := w.f.WriteAt(b, off)
	return err
}

// copyFrom copies n bytes at from in src to off in the replica.
func (w *replicaWriter) copyFrom(src *os.File, from, off, n int64) error {
	if err := w.s.fault(w.op); err != nil {
		return err
	}
	w.writes++
	return copyRange(src, from, w.f, off, n)
}

func (w *replicaWriter) punch(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if err := w.s.fault(w.op); err != nil {
		return err
	}
	w.writes++
	return punchHole(w.f, off, n)
}
