package dirstore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// This file is the data path of Commit: saving undo data, applying a staged
// stream to a replica, and putting the undo data back.

// writeUndo saves what applying the staged stream of d would overwrite in
// its replica, and returns the stream's data bytes.
func (s *Store) writeUndo(vm string, gen uint64, d planDisk) (int64, error) {
	sf, err := s.root.Open(stagedPath(vm, gen, d.Name))
	if err != nil {
		return 0, err
	}
	defer sf.Close()
	fr, err := frame.NewReader(bufio.NewReaderSize(sf, 1<<20), frame.Limits{})
	if err != nil {
		return 0, fmt.Errorf("%w: staged %s: %w", target.ErrCorrupt, d.Name, err)
	}
	h := fr.Header()

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
	c := &capture{w: w, rep: rep, bs: int64(h.BlockSize)}

	limit := min(prevSize, d.Size) // bytes of the replica the records may overwrite
	if rep == nil || d.Reset {
		limit = 0
	}
	if rep != nil && d.Reset {
		if err := c.saveAll(0, prevSize); err != nil {
			return 0, err
		}
	}
	bs := int64(h.BlockSize)
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("%w: staged %s: %w", target.ErrCorrupt, d.Name, err)
		}
		off := int64(rec.Block) * bs
		if off >= limit {
			continue
		}
		if rec.Kind == frame.KindData {
			err = c.addData(off, rec.Data[:min(int64(len(rec.Data)), limit-off)])
		} else {
			end := min(off+int64(rec.Count)*bs, limit)
			if err = c.flush(); err == nil {
				err = c.saveChanged(off, end)
			}
		}
		if err != nil {
			return 0, err
		}
	}
	if err := c.flush(); err != nil {
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
	return int64(fr.Stats().DataBytes), nil
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

	runOff int64
	run    []byte // new data of consecutive blocks from runOff
	old    []byte
}

func (c *capture) addData(off int64, data []byte) error {
	if len(c.run) > 0 && (c.runOff+int64(len(c.run)) != off || len(c.run)+len(data) > 1<<20) {
		if err := c.flush(); err != nil {
			return err
		}
	}
	if len(c.run) == 0 {
		c.runOff = off
	}
	c.run = append(c.run, data...)
	return nil
}

// flush saves the old bytes of the run's blocks: none where they equal the
// new ones, a zero entry where they are zeros.
func (c *capture) flush() error {
	if len(c.run) == 0 {
		return nil
	}
	c.old = slices.Grow(c.old[:0], len(c.run))[:len(c.run)]
	if err := readFull(c.rep, c.old, c.runOff); err != nil {
		return err
	}
	for i := int64(0); i < int64(len(c.run)); i += c.bs {
		j := min(i+c.bs, int64(len(c.run)))
		old := c.old[i:j]
		var err error
		switch {
		case bytes.Equal(old, c.run[i:j]):
		case allZero(old):
			err = c.w.zero(c.runOff+i, j-i)
		default:
			err = c.w.data(c.runOff+i, old)
		}
		if err != nil {
			return err
		}
	}
	c.run = c.run[:0]
	return nil
}

// saveChanged saves the non-zero bytes of [off, end), which a zero extent
// overwrites: holes and zeros stay as they are.
func (c *capture) saveChanged(off, end int64) error {
	return c.walk(off, end, nil, func(at int64, b []byte) error {
		if allZero(b) {
			return nil
		}
		return c.w.data(at, b)
	})
}

// saveAll saves all of [off, end): a shrink or a disk started afresh.
func (c *capture) saveAll(off, end int64) error {
	return c.walk(off, end, func(at, n int64) error { return c.w.zero(at, n) }, func(at int64, b []byte) error {
		if allZero(b) {
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

// applyDisk applies the staged stream of d to its replica and syncs it.
// It is idempotent: applying it again writes the same bytes.
func (s *Store) applyDisk(vm string, gen uint64, d planDisk) error {
	sf, err := s.root.Open(stagedPath(vm, gen, d.Name))
	if err != nil {
		return err
	}
	defer sf.Close()
	fr, err := frame.NewReader(bufio.NewReaderSize(sf, 1<<20), frame.Limits{})
	if err != nil {
		return fmt.Errorf("%w: staged %s: %w", target.ErrCorrupt, d.Name, err)
	}
	bs := int64(fr.Header().BlockSize)

	rp := replicaPath(vm, d.Name)
	if err := s.mkdirAll(path.Dir(rp)); err != nil {
		return err
	}
	existed, err := s.exists(rp)
	if err != nil {
		return err
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
	w := &replicaWriter{s: s, f: f, bs: bs, op: "replica"}
	if d.Reset {
		if err := w.truncate(0); err != nil {
			return err
		}
	}
	if err := w.truncate(d.Size); err != nil {
		return err
	}
	partial := false
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: staged %s: %w", target.ErrCorrupt, d.Name, err)
		}
		off := int64(rec.Block) * bs
		if rec.Kind == frame.KindData {
			err = w.data(off, rec.Data)
		} else if err = w.flush(); err == nil {
			err = w.punch(off, min(off+int64(rec.Count)*bs, d.Size)-off)
		}
		if err != nil {
			return err
		}
		if !partial && w.writes > 0 {
			partial = true
			s.step("apply " + d.Name + " partial")
		}
	}
	if err := w.flush(); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
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

// replicaWriter writes a replica: runs of consecutive data blocks in one
// write, zero blocks as holes.
type replicaWriter struct {
	s      *Store
	f      *os.File
	bs     int64
	op     string // fault injection kind
	runOff int64
	run    []byte
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

func (w *replicaWriter) data(off int64, data []byte) error {
	if len(w.run) > 0 && (w.runOff+int64(len(w.run)) != off || len(w.run)+len(data) > 1<<20) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if len(w.run) == 0 {
		w.runOff = off
	}
	w.run = append(w.run, data...)
	return nil
}

// flush writes the run: its non-zero blocks as data, its zero blocks as holes.
func (w *replicaWriter) flush() error {
	run := w.run
	for i := int64(0); i < int64(len(run)); {
		zero := allZero(run[i:min(i+w.bs, int64(len(run)))])
		j := i + w.bs
		for j < int64(len(run)) && allZero(run[j:min(j+w.bs, int64(len(run)))]) == zero {
			j += w.bs
		}
		j = min(j, int64(len(run)))
		var err error
		if zero {
			err = w.punch(w.runOff+i, j-i)
		} else {
			err = w.write(w.runOff+i, run[i:j])
		}
		if err != nil {
			return err
		}
		i = j
	}
	w.run = w.run[:0]
	return nil
}

func (w *replicaWriter) write(off int64, b []byte) error {
	if err := w.s.fault(w.op); err != nil {
		return err
	}
	w.writes++
	_, err := w.f.WriteAt(b, off)
	return err
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
