package tracker

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// segment is the append-only file that holds the block data of one
// generation of one VM.
//
// Appends reserve their offset with an atomic add and write with WriteAt
// outside any lock, so writers of different disks (and of disjoint blocks of
// one disk) run in parallel. A block already in the generation is
// overwritten in place, in the slot its first write reserved.
type segment struct {
	path string
	f    vfs.File
	tail atomic.Int64 // offset of the next record

	// done counts completed writes: a sync that starts after done reached
	// n covers every write counted in n (see syncData).
	done atomic.Uint64

	sync struct {
		sync.Mutex
		upTo uint64 // done value covered by the last successful sync
	}
}

func segmentPath(fs vfs.FS, dir string, vm uint32, gen uint64) string {
	return fs.PathJoin(segmentDir(fs, dir, vm), fmt.Sprintf("%016x.seg", gen))
}

func segmentDir(fs vfs.FS, dir string, vm uint32) string {
	return fs.PathJoin(dir, "segments", fmt.Sprintf("%08x", vm))
}

// createSegment creates the segment file of a generation and makes it and
// its directory entry durable, so that a synced record in it survives a
// crash.
func createSegment(fs vfs.FS, dir string, bs int, vm uint32, gen uint64, created int64) (*segment, error) {
	sdir := segmentDir(fs, dir, vm)
	if err := fs.MkdirAll(sdir, 0o755); err != nil {
		return nil, err
	}
	path := segmentPath(fs, dir, vm, gen)
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, err
	}
	var hdr [segHeaderSize]byte
	(&segHeader{blockSize: uint32(bs), vm: vm, gen: gen, created: created}).encode(hdr[:])
	if _, err := f.WriteAt(hdr[:], 0); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(fs, sdir); err != nil {
		f.Close()
		return nil, err
	}
	// The "segments" directory itself is new only with the VM's first
	// segment; syncing it each time is cheap and keeps this simple.
	if err := syncDir(fs, fs.PathDir(sdir)); err != nil {
		f.Close()
		return nil, err
	}
	if err := syncDir(fs, dir); err != nil {
		f.Close()
		return nil, err
	}
	s := &segment{path: path, f: f}
	s.tail.Store(segHeaderSize)
	return s, nil
}

func syncDir(fs vfs.FS, dir string) error {
	d, err := fs.OpenDir(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// reserve returns the offset of n bytes at the end of the segment.
func (s *segment) reserve(n int64) int64 {
	return s.tail.Add(n) - n
}

// syncData makes every write completed before the call durable. Concurrent
// callers share one SyncData: a caller that finds its writes covered by a
// sync that started after them returns at once.
func (s *segment) syncData() error {
	target := s.done.Load()
	s.sync.Lock()
	defer s.sync.Unlock()
	if s.sync.upTo >= target || s.f == nil {
		// Covered by a sync that started after our writes, or closed
		// after its final sync.
		return nil
	}
	cur := s.done.Load()
	if err := s.f.SyncData(); err != nil {
		return err
	}
	s.sync.upTo = cur
	return nil
}

// close closes the file. Changes must no longer write to it.
func (s *segment) close() error {
	s.sync.Lock()
	defer s.sync.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// scanResult is what a scan of a segment found.
type scanResult struct {
	header segHeader
	end    int64 // offset after the last whole, valid record
	size   int64 // file size

	// Of a scan that skips holes: junk lists the ranges of torn writes it
	// skipped (the start of a record header; a header whose record runs
	// past the end of the file), to be zeroed; unexplained is set when it
	// stopped at bytes that no torn write explains.
	junk        [][2]int64
	unexplained bool
}

// torn reports whether the file has bytes after its last valid record: a
// write that never completed, or one that failed.
func (r scanResult) torn() bool { return r.end != r.size }

// scanSegment reads the records of a segment in order and calls fn with
// each header and the offset of its payload. It stops at the first header
// that is not whole and valid, or whose payload runs past the end of the
// file: that is the torn tail of a crash.
//
// With skipHoles, the segment is one that a process which died left in
// the page cache (the host did not crash). Its writers reserved their
// records in order and wrote them in any order, each header first: a
// record whose writer died reads as zeros (a hole), as the first bytes of
// its header followed by zeros, or as a whole header whose data may be
// torn (replayed; Open records its blocks again, they were in flight).
// The scan then goes on past holes and the starts of headers to the next
// record, which begins with its magic; it stops, unexplained, at anything
// else. A guest's data is never read as a header: the scan only lands on
// the first non-zero byte after zeros, which is a record's first byte.
func scanSegment(f vfs.File, bs int64, skipHoles bool, fn func(h recHeader, dataOff int64)) (scanResult, error) {
	var res scanResult
	st, err := f.Stat()
	if err != nil {
		return res, err
	}
	res.size = st.Size()
	var hb [segHeaderSize]byte
	if _, err := f.ReadAt(hb[:], 0); err != nil {
		return res, fmt.Errorf("%w (%v)", errBadSegHeader, err)
	}
	if res.header, err = decodeSegHeader(hb[:]); err != nil {
		return res, err
	}
	if int64(res.header.blockSize) != bs {
		return res, fmt.Errorf("segment block size %d, log block size %d", res.header.blockSize, bs)
	}
	// Headers are read through a 64 KiB window, so that a segment of small
	// records is not read one header per call, nor one of large records
	// (1 MiB writes) read whole: data is skipped, not read.
	w := window{f: f, buf: make([]byte, 64<<10), off: -1}
	off := int64(segHeaderSize)
	res.end = off
	for off < res.size {
		b, err := w.at(off, recHeaderSize)
		if err != nil {
			return res, err
		}
		if h, ok := decodeRecHeader(b); ok {
			next := off + recHeaderSize
			if h.kind == KindData {
				next += int64(min(h.count, uint64(res.size)/uint64(bs)+1)) * bs
			}
			if next <= res.size {
				fn(h, off+recHeaderSize)
				off = next
				res.end = off
				continue
			}
			if skipHoles {
				// The last record, torn: nothing was written after it.
				res.junk = append(res.junk, [2]int64{off, res.size})
			}
			break
		}
		if !skipHoles {
			break
		}
		if b[0] != 0 {
			// The first bytes of a header, then zeros.
			n := len(b)
			for n > 0 && b[n-1] == 0 {
				n--
			}
			m := min(n, len(recMagic))
			if n >= recHeaderSize || !bytes.Equal(b[:m], recMagic[:m]) {
				res.unexplained = true
				break
			}
			res.junk = append(res.junk, [2]int64{off, off + int64(n)})
			off += int64(n)
		}
		// A hole: on to the next non-zero byte.
		if off, err = w.nonZero(off, res.size); err != nil {
			return res, err
		}
	}
	return res, nil
}

// window reads a file through a buffer.
type window struct {
	f   vfs.File
	buf []byte
	off int64 // file offset of buf[0], -1 before the first read
	n   int
}

// at returns up to n bytes at off (fewer at the end of the file).
func (w *window) at(off int64, n int) ([]byte, error) {
	if w.off < 0 || off < w.off || off+int64(n) > w.off+int64(w.n) {
		m, err := w.f.ReadAt(w.buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		w.off, w.n = off, m
	}
	b := w.buf[off-w.off : w.n]
	return b[:min(n, len(b))], nil
}

// nonZero returns the offset of the first non-zero byte at or after off,
// or size.
func (w *window) nonZero(off, size int64) (int64, error) {
	for off < size {
		b, err := w.at(off, len(w.buf))
		if err != nil {
			return 0, err
		}
		if len(b) == 0 {
			return size, nil
		}
		for i, c := range b {
			if c != 0 {
				return off + int64(i), nil
			}
		}
		off += int64(len(b))
	}
	return size, nil
}
