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
// Small records (a header and a few blocks: a 4 KiB random write) are
// appended into a buffer that is written out when full, on Sync and at the
// freeze: one write per 256 KiB instead of one per record, which matters
// where a syscall costs microseconds. A record in the buffer is recorded
// (invariant 1: its index entry is in memory, and the buffer is written
// before anything syncs or reads the generation). An agent that dies loses
// it, but a dirty shutdown resynchronizes every disk anyway (invariant 2). Large records are written from the caller's memory
// outside any lock, so that writers of large blocks run in parallel. A
// block already in the generation is overwritten in place, in the slot its
// first write reserved: in the buffer if it is still there.
type segment struct {
	path string
	f    vfs.File

	app struct {
		sync.Mutex
		tail int64  // offset of the next record: base + len(buf)
		base int64  // file offset of buf[0]
		buf  []byte // appended records not yet written
	}

	// done counts completed writes: a sync that starts after done reached
	// n covers every write counted in n (see syncData).
	done atomic.Uint64

	sync struct {
		sync.Mutex
		upTo uint64 // done value covered by the last successful sync
	}
}

// appendBuf is the size of a segment's append buffer, and appendMax the
// largest record appended through it.
const (
	appendBuf = 256 << 10
	appendMax = 64 << 10
)

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
	s.setTail(segHeaderSize)
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

// setTail makes off the offset of the next record, with nothing buffered.
func (s *segment) setTail(off int64) {
	s.app.Lock()
	defer s.app.Unlock()
	s.app.tail, s.app.base, s.app.buf = off, off, s.app.buf[:0]
}

// append appends rec (at most appendMax bytes) at the end of the segment
// and returns its offset. An error is that of writing out the buffer,
// which held the records of other changes too: the offset is reserved all
// the same, and the generation can no longer be trusted.
func (s *segment) append(rec []byte) (int64, error) {
	s.app.Lock()
	defer s.app.Unlock()
	var err error
	if len(s.app.buf)+len(rec) > appendBuf {
		err = s.flushLocked()
	}
	if s.app.buf == nil {
		s.app.buf = make([]byte, 0, appendBuf)
	}
	off := s.app.tail
	s.app.buf = append(s.app.buf, rec...)
	s.app.tail += int64(len(rec))
	return off, err
}

// reserve returns the offset of n bytes at the end of the segment, which
// the caller writes with writeAt. The buffer is written out first: a
// record after it must not reach the file before it.
func (s *segment) reserve(n int64) (int64, error) {
	s.app.Lock()
	defer s.app.Unlock()
	err := s.flushLocked()
	off := s.app.tail
	s.app.tail += n
	s.app.base = s.app.tail
	return off, err
}

// writeAt writes p at off, a reserved record or a slot of one: into the
// buffer where it holds that part of the segment, else into the file.
func (s *segment) writeAt(p []byte, off int64) error {
	s.app.Lock()
	if end := off + int64(len(p)); end > s.app.base && len(s.app.buf) > 0 {
		from := max(off, s.app.base)
		copy(s.app.buf[from-s.app.base:end-s.app.base], p[from-off:])
		p = p[:from-off]
	}
	s.app.Unlock()
	if len(p) == 0 {
		return nil
	}
	_, err := s.f.WriteAt(p, off)
	return err
}

// flush writes out the buffer.
func (s *segment) flush() error {
	s.app.Lock()
	defer s.app.Unlock()
	return s.flushLocked()
}

// flushLocked writes out the buffer. On failure its records are lost, and
// the buffer moves on all the same: the offsets already handed out stay.
func (s *segment) flushLocked() error {
	if len(s.app.buf) == 0 {
		return nil
	}
	_, err := s.f.WriteAt(s.app.buf, s.app.base)
	s.app.base += int64(len(s.app.buf))
	s.app.buf = s.app.buf[:0]
	return err
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
	if err := s.flush(); err != nil {
		return flushError{err}
	}
	if err := s.f.SyncData(); err != nil {
		return err
	}
	s.sync.upTo = cur
	return nil
}

// flushError is a failure of syncData to write out the append buffer: the
// records in it are lost, where a failed fsync only may have lost some.
type flushError struct{ err error }

func (e flushError) Error() string { return e.err.Error() }
func (e flushError) Unwrap() error { return e.err }

// syncFailure returns the resync reason for a failed syncData, and whether
// records were lost for sure.
func syncFailure(err error) (reason string, lost bool) {
	if errors.As(err, new(flushError)) {
		return fmt.Sprintf("%s: %v", reasonWrite, err), true
	}
	return fmt.Sprintf("%s: %v", reasonSync, err), false
}

// close closes the file. Changes must no longer write to it.
func (s *segment) close() error {
	s.sync.Lock()
	defer s.sync.Unlock()
	if s.f == nil {
		return nil
	}
	s.app.Lock()
	err := s.flushLocked()
	s.app.buf = nil // frozen generations stay in memory until dropped
	s.app.Unlock()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
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
