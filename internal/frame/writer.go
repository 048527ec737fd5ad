package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"

	"github.com/pierrec/lz4/v4"
	"github.com/valyala/bytebufferpool"
	"github.com/zeebo/xxh3"
)

// flushSize is how much encoded output a Writer gathers before writing it to
// the underlying io.Writer: few large writes, bounded memory.
const flushSize = 64 << 10

// A compressor holds a 64 KiB-odd hash table; streams are short-lived, so
// reuse them.
var compressors = sync.Pool{New: func() any { return new(lz4.Compressor) }}

var errClosed = errors.New("frame: Writer is closed")

// Writer encodes one stream. Call Data and Zero in ascending block order,
// then Close. A Writer is not safe for concurrent use.
//
// Errors are sticky: after a failed write to the underlying io.Writer or a
// rejected call, every later call returns that error and Close writes no
// trailer, so a reader sees the stream as truncated rather than silently
// missing a record.
type Writer struct {
	w       io.Writer
	h       Header
	nblocks uint64

	buf  *bytebufferpool.ByteBuffer // encoded output not yet written to w
	comp *lz4.Compressor
	sum  *xxh3.Hasher // stream checksum over everything flushed

	next     uint64 // lowest block the next record may start at
	lastData bool   // the previous record was data ending at next
	raw      bool   // never compress (SetRaw)
	misses   int    // data blocks in a row that LZ4 could not shrink
	skipped  int    // blocks sent raw without trying since the last try
	zeroAt   uint64 // pending zero extent, merged with adjacent ones
	zeroN    uint64 // its block count; 0 for none

	stats Stats
	err   error
}

// NewWriter checks h, writes the stream header to w and returns a Writer for
// the records. The header may sit in the Writer's buffer until the first
// flush or Close.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if err := h.validate(MaxNameLen); err != nil {
		return nil, fmt.Errorf("frame: invalid header: %w", err)
	}
	created, err := unixNano(h.Created)
	if err != nil {
		return nil, fmt.Errorf("frame: invalid header: %w", err)
	}
	fw := &Writer{
		w:       w,
		h:       h,
		nblocks: h.Blocks(),
		buf:     bytebufferpool.Get(),
		comp:    compressors.Get().(*lz4.Compressor),
		sum:     xxh3.New(),
	}
	fw.buf.B = appendHeader(fw.buf.B[:0], &h, created)
	fw.stats.WireBytes = uint64(len(fw.buf.B))
	return fw, nil
}

func appendHeader(b []byte, h *Header, created int64) []byte {
	start := len(b)
	b = append(b, Magic...)
	b = append(b, Version, MinorVersion, byte(h.Kind), blockShift(h.BlockSize))
	b = binary.LittleEndian.AppendUint64(b, h.Generation)
	b = binary.LittleEndian.AppendUint64(b, h.Base)
	b = binary.LittleEndian.AppendUint64(b, h.DiskSize)
	b = binary.LittleEndian.AppendUint64(b, uint64(created))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.VM)))
	b = append(b, h.VM...)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(h.Disk)))
	b = append(b, h.Disk...)
	b = binary.LittleEndian.AppendUint16(b, 0) // no header extension in 1.0
	return binary.LittleEndian.AppendUint64(b, xxh3.Hash(b[start:]))
}

// SetRaw makes the Writer send every data block raw, without offering it
// to LZ4: for a stream that crosses no network, where compressing costs the
// sender CPU and the receiver the decompression, and saves nothing. Call
// it before the first Data. The stream is valid either way: readers accept
// raw and compressed records alike.
func (w *Writer) SetRaw() { w.raw = true }

// Data adds data for the blocks from block on: data is one or more whole
// blocks, where the last one may be the disk's final partial block. Each
// block becomes its own record with its own checksum, LZ4-compressed when
// that makes it smaller (LZ4 is not tried on every block of a run that does
// not compress; see lz4GiveUp). block must not be below the end of the previous
// record. Data does not keep data after it returns.
func (w *Writer) Data(block uint64, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if err := w.checkData(block, len(data)); err != nil {
		return w.fail(err)
	}
	if err := w.flushZero(); err != nil {
		return err
	}
	var ahead *compressedAhead
	if !w.raw && w.misses < lz4GiveUp && len(data) >= parallelMin*w.h.BlockSize && parallelWorkers > 1 {
		ahead = compressAhead(w.h.BlockSize, data)
		defer ahead.release()
	}
	for i, b := 0, block; len(data) > 0; i, b = i+1, b+1 {
		n := w.h.blockLen(b)
		w.appendBlock(b, data[:n], ahead.result(i))
		data = data[n:]
		if len(w.buf.B) >= flushSize {
			if err := w.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// A Data call of at least parallelMin blocks, in a stream whose blocks
// compress, has them compressed by parallelWorkers goroutines before they
// are encoded in order. Each block's compression depends only on the block
// (the compressor starts afresh for each), and the encoder still decides
// block by block whether to use it (see tryLZ4), so the stream is the same
// bytes as when encoded one block at a time; a block LZ4 is not offered
// was compressed for nothing, at most one call's worth after the stream
// stops compressing.
const parallelMin = 16

var parallelWorkers = min(runtime.GOMAXPROCS(0), 4)

// compressedAhead holds the blocks of one Data call compressed: block i's
// LZ4 payload is out[i*bs:][:n[i]], n[i] == 0 where LZ4 could not shrink it
// (by more than its 4-byte length and 1 byte).
type compressedAhead struct {
	bs  int
	out *bytebufferpool.ByteBuffer
	n   []int
}

// aheadResult is one block's entry of a compressedAhead: ok says it was
// computed; payload is nil if LZ4 did not shrink the block.
type aheadResult struct {
	ok      bool
	payload []byte
}

func compressAhead(bs int, data []byte) *compressedAhead {
	blocks := (len(data) + bs - 1) / bs
	a := &compressedAhead{bs: bs, out: bytebufferpool.Get(), n: make([]int, blocks)}
	a.out.B = slices.Grow(a.out.B[:0], blocks*bs)[:blocks*bs]
	per := (blocks + parallelWorkers - 1) / parallelWorkers
	var wg sync.WaitGroup
	for first := 0; first < blocks; first += per {
		last := min(first+per, blocks)
		work := func() {
			c := compressors.Get().(*lz4.Compressor)
			defer compressors.Put(c)
			for i := first; i < last; i++ {
				src := data[i*bs : min((i+1)*bs, len(data))]
				if limit := len(src) - 5; limit > 0 {
					if n, err := c.CompressBlock(src, a.out.B[i*bs:i*bs+limit]); err == nil {
						a.n[i] = n
					}
				}
			}
		}
		if last == blocks {
			work() // the last part on the caller's goroutine
		} else {
			wg.Go(work)
		}
	}
	wg.Wait()
	return a
}

// result returns block i's entry; a nil compressedAhead has none.
func (a *compressedAhead) result(i int) aheadResult {
	if a == nil {
		return aheadResult{}
	}
	if a.n[i] == 0 {
		return aheadResult{ok: true}
	}
	return aheadResult{ok: true, payload: a.out.B[i*a.bs : i*a.bs+a.n[i]]}
}

func (a *compressedAhead) release() { bytebufferpool.Put(a.out) }

func (w *Writer) checkData(block uint64, n int) error {
	bs := uint64(w.h.BlockSize)
	switch {
	case n == 0:
		return fmt.Errorf("frame: Data at block %d: no data", block)
	case block < w.end():
		return fmt.Errorf("frame: Data at block %d: not after the previous record, which ends at block %d", block, w.end())
	case block >= w.nblocks:
		return fmt.Errorf("frame: Data at block %d: past the disk's %d blocks", block, w.nblocks)
	}
	// block*bs < DiskSize, so neither this nor rest underflows or overflows.
	rest := w.h.DiskSize - block*bs
	if uint64(n) > rest || (uint64(n)%bs != 0 && uint64(n) != rest) {
		return fmt.Errorf("frame: Data at block %d: %d bytes is not a whole number of blocks of %d within the disk size %d",
			block, n, bs, w.h.DiskSize)
	}
	return nil
}

// appendBlock encodes one block record into the buffer; ahead is the
// block compressed in advance, if it was.
func (w *Writer) appendBlock(block uint64, data []byte, ahead aheadResult) {
	tag := byte(tagData)
	head := 1 + 8 + 4 + 8 // tag, block, compressed length, checksum
	if w.lastData && block == w.next {
		tag = tagNext
		head -= 8
	}
	sum := xxh3.Hash(data)

	// Compress straight into the buffer, after room for the record head. A
	// compressed payload is used only when it beats the raw one including
	// its 4-byte length; a dst that small lets LZ4 give up early.
	b := w.buf.B
	at := len(b)
	b = slices.Grow(b, head+len(data))
	clen := 0
	if limit := len(data) - 5; limit > 0 && w.tryLZ4() {
		dst := b[at+head : at+head+limit]
		if ahead.ok {
			clen = copy(dst, ahead.payload)
		} else if n, err := w.comp.CompressBlock(data, dst); err == nil {
			clen = n
		}
		w.tried(clen > 0)
	}
	if clen > 0 {
		b = b[:at+head]
		b[at] = tag | tagLZ4
		p := at + 1
		if tag == tagData {
			binary.LittleEndian.PutUint64(b[p:], block)
			p += 8
		}
		binary.LittleEndian.PutUint32(b[p:], uint32(clen))
		binary.LittleEndian.PutUint64(b[p+4:], sum)
		b = b[:at+head+clen]
		w.stats.Compressed++
	} else {
		b = append(b, tag)
		if tag == tagData {
			b = binary.LittleEndian.AppendUint64(b, block)
		}
		b = binary.LittleEndian.AppendUint64(b, sum)
		b = append(b, data...)
	}
	w.stats.WireBytes += uint64(len(b) - at)
	w.buf.B = b

	w.stats.Records++
	w.stats.DataBlocks++
	w.stats.DataBytes += uint64(len(data))
	w.next = block + 1
	w.lastData = true
}

// Incompressible data (encrypted or already compressed disks, media) makes
// LZ4 a pure cost: after lz4GiveUp data blocks in a row that did not shrink,
// the Writer sends blocks raw and tries LZ4 on one block in lz4Probe, until
// one shrinks again. The decision depends only on the blocks written, so a
// stream encoded again is the same bytes.
const (
	lz4GiveUp = 16
	lz4Probe  = 16
)

// tryLZ4 says whether to offer the next data block to LZ4.
func (w *Writer) tryLZ4() bool {
	if w.raw {
		return false
	}
	if w.misses < lz4GiveUp || w.skipped >= lz4Probe-1 {
		return true
	}
	w.skipped++
	return false
}

// tried records whether LZ4 shrank the block it was offered.
func (w *Writer) tried(shrank bool) {
	w.skipped = 0
	if shrank {
		w.misses = 0
	} else {
		w.misses++
	}
}

// Zero adds an extent of count blocks from block on that read as zeros
// (a punched hole, a zeroed range, or the tail of a disk that shrank and
// grew again). Adjacent extents are merged into one record.
func (w *Writer) Zero(block, count uint64) error {
	if w.err != nil {
		return w.err
	}
	end := w.end()
	switch {
	case count == 0:
		return w.fail(fmt.Errorf("frame: Zero at block %d: count is 0", block))
	case block < end:
		return w.fail(fmt.Errorf("frame: Zero at block %d: not after the previous record, which ends at block %d", block, end))
	case block >= w.nblocks || count > w.nblocks-block:
		return w.fail(fmt.Errorf("frame: Zero at blocks %d+%d: past the disk's %d blocks", block, count, w.nblocks))
	}
	if w.zeroN > 0 && block == end {
		w.zeroN += count
		return nil
	}
	if err := w.flushZero(); err != nil {
		return err
	}
	w.zeroAt, w.zeroN = block, count
	return nil
}

// end returns the block after the last one added, counting a pending zero
// extent.
func (w *Writer) end() uint64 {
	if w.zeroN > 0 {
		return w.zeroAt + w.zeroN
	}
	return w.next
}

// flushZero encodes the pending zero extent, if any.
func (w *Writer) flushZero() error {
	if w.zeroN == 0 {
		return nil
	}
	b := append(w.buf.B, tagZero)
	b = binary.LittleEndian.AppendUint64(b, w.zeroAt)
	b = binary.LittleEndian.AppendUint64(b, w.zeroN)
	w.buf.B = b
	w.stats.WireBytes += 17
	w.stats.Records++
	w.stats.ZeroBlocks += w.zeroN
	w.next = w.zeroAt + w.zeroN
	w.lastData = false
	w.zeroN = 0
	if len(b) >= flushSize {
		return w.flush()
	}
	return nil
}

func (w *Writer) flush() error {
	w.sum.Write(w.buf.B)
	_, err := w.w.Write(w.buf.B)
	w.buf.Reset()
	if err != nil {
		return w.fail(fmt.Errorf("frame: write: %w", err))
	}
	return nil
}

// fail makes err sticky and releases the buffers.
func (w *Writer) fail(err error) error {
	w.err = err
	w.release()
	return err
}

func (w *Writer) release() {
	if w.buf != nil {
		bytebufferpool.Put(w.buf)
		compressors.Put(w.comp)
		w.buf, w.comp = nil, nil
	}
}

// Close writes the trailer and flushes everything to the underlying writer,
// which it does not close. It returns the Writer's sticky error, if any,
// without writing a trailer. Closing a closed Writer returns nil.
func (w *Writer) Close() error {
	if w.err == errClosed {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	if err := w.flushZero(); err != nil {
		return err
	}
	b := append(w.buf.B, tagEnd)
	b = binary.LittleEndian.AppendUint64(b, w.stats.Records)
	b = binary.LittleEndian.AppendUint64(b, w.stats.DataBlocks)
	b = binary.LittleEndian.AppendUint64(b, w.stats.ZeroBlocks)
	b = binary.LittleEndian.AppendUint64(b, w.stats.DataBytes)
	w.sum.Write(b)
	b = binary.LittleEndian.AppendUint64(b, w.sum.Sum64())
	w.buf.B = b
	w.stats.WireBytes += 1 + trailerLen
	_, err := w.w.Write(b)
	if err != nil {
		return w.fail(fmt.Errorf("frame: write: %w", err))
	}
	w.err = errClosed
	w.release()
	return nil
}

// Stats returns what the Writer has encoded so far. A zero extent is counted
// once a later call or Close ends it (adjacent extents merge).
func (w *Writer) Stats() Stats { return w.stats }
