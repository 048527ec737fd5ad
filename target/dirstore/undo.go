package dirstore

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/zeebo/xxh3"
)

// An undo file holds what one generation changed in one disk, as it was
// before: applying it to the replica at point gen gives the disk at the
// point before. docs/dirstore-format.md specifies the bytes:
//
//	header  48 bytes: magic, version, flags, generation, previous size, checksum
//	data    payloads of the data entries, raw
//	index   40 bytes per entry, ascending and disjoint
//	footer  32 bytes: index offset, entry count, index checksum, end magic
const (
	undoMagic     = "DRFSUNDO"
	undoEndMagic  = "UNDO-END"
	undoVersion   = 1
	undoHeaderLen = 48
	undoEntryLen  = 40
	undoFooterLen = 32

	// maxUndoData is the longest data entry: a block (at most a frame's
	// largest, 1 MiB) or a chunk of a range saved whole.
	maxUndoData = 1 << 20

	undoAbsent = 1 << 0 // flag: the disk did not exist before the generation
	undoReset  = 1 << 1 // flag: the generation started the disk afresh

	entryData = 1
	entryZero = 2
)

var errUndoCorrupt = errors.New("corrupt undo file")

// undoEntry is one range of an undo file: its bytes before the generation,
// either the payload at at (checksum sum) or zeros.
type undoEntry struct {
	off, len int64
	at       int64
	sum      uint64
	zero     bool
}

// undoWriter writes an undo file front to back. Entries must come in
// ascending, disjoint order.
type undoWriter struct {
	f       *os.File
	bw      *bufio.Writer
	at      int64 // file offset of the next payload
	end     int64 // end of the last entry
	entries []undoEntry
}

// faultWriter passes writes through a fault check (tests inject ENOSPC).
type faultWriter struct {
	w     io.Writer
	fault func() error
}

func (fw faultWriter) Write(p []byte) (int, error) {
	if err := fw.fault(); err != nil {
		return 0, err
	}
	return fw.w.Write(p)
}

func newUndoWriter(f *os.File, fault func() error, gen uint64, prevSize int64, flags uint16) (*undoWriter, error) {
	w := &undoWriter{f: f, bw: bufio.NewWriterSize(faultWriter{f, fault}, 1<<20), at: undoHeaderLen}
	var h [undoHeaderLen]byte
	le := binary.LittleEndian
	copy(h[:], undoMagic)
	le.PutUint16(h[8:], undoVersion)
	le.PutUint16(h[10:], flags)
	le.PutUint64(h[16:], gen)
	le.PutUint64(h[24:], uint64(prevSize))
	le.PutUint64(h[40:], xxh3.Hash(h[:40]))
	_, err := w.bw.Write(h[:])
	return w, err
}

// data saves p as the bytes at off.
func (w *undoWriter) data(off int64, p []byte) error {
	if off < w.end || len(p) == 0 || len(p) > maxUndoData {
		return fmt.Errorf("dirstore: undo entry at %d+%d after %d", off, len(p), w.end)
	}
	if _, err := w.bw.Write(p); err != nil {
		return err
	}
	w.entries = append(w.entries, undoEntry{off: off, len: int64(len(p)), at: w.at, sum: xxh3.Hash(p)})
	w.at += int64(len(p))
	w.end = off + int64(len(p))
	return nil
}

// zero records that [off, off+n) read as zeros.
func (w *undoWriter) zero(off, n int64) error {
	if off < w.end || n <= 0 {
		return fmt.Errorf("dirstore: undo zero entry at %d+%d after %d", off, n, w.end)
	}
	if k := len(w.entries) - 1; k >= 0 && w.entries[k].zero && w.entries[k].off+w.entries[k].len == off {
		w.entries[k].len += n
	} else {
		w.entries = append(w.entries, undoEntry{off: off, len: n, zero: true})
	}
	w.end = off + n
	return nil
}

// finish writes the index and footer and syncs the file.
func (w *undoWriter) finish() error {
	le := binary.LittleEndian
	sum := xxh3.New()
	var e [undoEntryLen]byte
	for _, u := range w.entries {
		le.PutUint64(e[0:], uint64(u.off))
		le.PutUint64(e[8:], uint64(u.len))
		le.PutUint64(e[16:], uint64(u.at))
		le.PutUint64(e[24:], u.sum)
		clear(e[32:])
		e[32] = entryData
		if u.zero {
			e[32] = entryZero
			clear(e[16:32])
		}
		sum.Write(e[:])
		if _, err := w.bw.Write(e[:]); err != nil {
			return err
		}
	}
	var ft [undoFooterLen]byte
	le.PutUint64(ft[0:], uint64(w.at))
	le.PutUint64(ft[8:], uint64(len(w.entries)))
	le.PutUint64(ft[16:], sum.Sum64())
	copy(ft[24:], undoEndMagic)
	if _, err := w.bw.Write(ft[:]); err != nil {
		return err
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	return w.f.Sync()
}

// undoFile is a loaded undo file: its header and index, with the file open
// for the payloads.
type undoFile struct {
	f        *os.File
	gen      uint64
	prevSize int64
	flags    uint16
	entries  []undoEntry
}

// loadUndo reads and checks the header, footer and index of an undo file.
// Its cost is proportional to the number of entries, not the disk size.
func loadUndo(f *os.File) (*undoFile, error) {
	bad := func(format string, args ...any) error {
		return brokenError{fmt.Errorf("dirstore: %s: %w: %s", f.Name(), errUndoCorrupt, fmt.Sprintf(format, args...))}
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if size < undoHeaderLen+undoFooterLen {
		return nil, bad("%d bytes", size)
	}
	le := binary.LittleEndian
	var h [undoHeaderLen]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		return nil, err
	}
	switch {
	case string(h[:8]) != undoMagic:
		return nil, bad("magic %q", h[:8])
	case le.Uint64(h[40:]) != xxh3.Hash(h[:40]):
		return nil, bad("header checksum")
	case le.Uint16(h[8:]) != undoVersion:
		return nil, bad("version %d", le.Uint16(h[8:]))
	}
	u := &undoFile{f: f, flags: le.Uint16(h[10:]), gen: le.Uint64(h[16:]), prevSize: int64(le.Uint64(h[24:]))}
	var ft [undoFooterLen]byte
	if _, err := f.ReadAt(ft[:], size-undoFooterLen); err != nil {
		return nil, err
	}
	indexAt, count := int64(le.Uint64(ft[0:])), le.Uint64(ft[8:])
	switch {
	case string(ft[24:]) != undoEndMagic:
		return nil, bad("end magic %q", ft[24:])
	case indexAt < undoHeaderLen || count > uint64(size)/undoEntryLen ||
		indexAt+int64(count)*undoEntryLen+undoFooterLen != size:
		return nil, bad("index at %d with %d entries in %d bytes", indexAt, count, size)
	case u.prevSize < 0:
		return nil, bad("size %d", u.prevSize)
	}
	index := make([]byte, count*undoEntryLen)
	if _, err := f.ReadAt(index, indexAt); err != nil {
		return nil, err
	}
	if xxh3.Hash(index) != le.Uint64(ft[16:]) {
		return nil, bad("index checksum")
	}
	u.entries = make([]undoEntry, count)
	end := int64(0)
	for i := range u.entries {
		e := index[i*undoEntryLen:]
		x := undoEntry{off: int64(le.Uint64(e[0:])), len: int64(le.Uint64(e[8:])), at: int64(le.Uint64(e[16:])), sum: le.Uint64(e[24:])}
		switch e[32] {
		case entryZero:
			x.zero = true
		case entryData:
			if x.len > maxUndoData || x.at < undoHeaderLen || x.at+x.len > indexAt {
				return nil, bad("entry %d: payload %d+%d", i, x.at, x.len)
			}
		default:
			return nil, bad("entry %d: kind %d", i, e[32])
		}
		if x.off < end || x.len <= 0 || x.off+x.len > u.prevSize {
			return nil, bad("entry %d: range %d+%d after %d, size %d", i, x.off, x.len, end, u.prevSize)
		}
		end = x.off + x.len
		u.entries[i] = x
	}
	return u, nil
}

// payload reads and verifies the payload of data entry e into buf.
func (u *undoFile) payload(e *undoEntry, buf []byte) ([]byte, error) {
	buf = buf[:e.len]
	if _, err := u.f.ReadAt(buf, e.at); err != nil {
		return nil, err
	}
	if xxh3.Hash(buf) != e.sum {
		return nil, brokenError{fmt.Errorf("dirstore: %s: %w: checksum of the entry at %d", u.f.Name(), errUndoCorrupt, e.off)}
	}
	return buf, nil
}

// find returns the index of the first entry that ends after off.
func (u *undoFile) find(off int64) int {
	lo, hi := 0, len(u.entries)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if e := &u.entries[m]; e.off+e.len <= off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}
