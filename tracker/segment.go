package tracker

import (
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
}

// torn reports whether the file has bytes after its last valid record: a
// write that never completed, or one that failed.
func (r scanResult) torn() bool { return r.end != r.size }

// scanSegment reads the records of a segment in order and calls fn with
// each header and the offset of its payload. It stops at the first header
// that is not whole and valid, or whose payload runs past the end of the
// file: that is the torn tail of a crash.
func scanSegment(f vfs.File, bs int64, fn func(h recHeader, dataOff int64)) (scanResult, error) {
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
	off := int64(segHeaderSize)
	res.end = off
	// Headers are read through a window so a segment of small records is
	// not read one header per call; data is skipped, not read.
	const window = 1 << 20
	buf := make([]byte, window)
	var bufOff int64 = -1
	var bufLen int
	for off+recHeaderSize <= res.size {
		if bufOff < 0 || off < bufOff || off+recHeaderSize > bufOff+int64(bufLen) {
			n, err := f.ReadAt(buf, off)
			if err != nil && !errors.Is(err, io.EOF) {
				return res, err
			}
			bufOff, bufLen = off, n
			if n < recHeaderSize {
				break
			}
		}
		h, ok := decodeRecHeader(buf[off-bufOff : off-bufOff+recHeaderSize])
		if !ok {
			break
		}
		next := off + recHeaderSize
		if h.kind == KindData {
			if h.count > uint64(res.size)/uint64(bs) {
				break
			}
			next += int64(h.count) * bs
			if next > res.size {
				break
			}
		}
		fn(h, off+recHeaderSize)
		off = next
		res.end = off
	}
	return res, nil
}
