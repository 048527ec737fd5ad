package frame

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
	"github.com/valyala/bytebufferpool"
	"github.com/zeebo/xxh3"
)

// readBufSize is the buffer NewReader puts in front of an input that has
// none of its own.
const readBufSize = 64 << 10

type byteReader interface {
	io.Reader
	io.ByteReader
}

// Reader decodes one stream. It is not safe for concurrent use.
//
// Errors are sticky: once Next returns an error (io.EOF included), every later
// call returns the same error. Besides io.EOF, a Reader's errors wrap
// ErrCorrupt, ErrTruncated, ErrVersion or ErrLimit, or else the input's own
// read error (which may be worth a retry; the others are not).
type Reader struct {
	r       io.Reader
	h       Header
	lim     Limits
	nblocks uint64

	sum     *xxh3.Hasher // stream checksum over every byte read
	scratch [trailerLen]byte
	blk     *bytebufferpool.ByteBuffer // Record.Data; at most one block
	cbuf    *bytebufferpool.ByteBuffer // compressed payload; smaller than a block

	next     uint64 // lowest block the next record may start at
	lastData bool   // the previous record was data ending at next
	stats    Stats
	err      error
}

// NewReader reads and verifies the stream header from r, within lim (the
// zero Limits means the defaults). Records are read from r by Next.
//
// If r is an io.ByteReader (a *bufio.Reader, a *bytes.Reader), the Reader
// reads exactly the stream's bytes from it, leaving r just after the trailer.
// Otherwise it wraps r in a buffer and may read past the end of the stream.
func NewReader(r io.Reader, lim Limits) (*Reader, error) {
	fr := &Reader{lim: lim.withDefaults(), sum: xxh3.New()}
	if br, ok := r.(byteReader); ok {
		fr.r = br
	} else {
		fr.r = bufio.NewReaderSize(r, readBufSize)
	}
	if err := fr.readHeader(); err != nil {
		return nil, err
	}
	fr.nblocks = fr.h.Blocks()
	return fr, nil
}

// Header returns the stream's header.
func (r *Reader) Header() Header { return r.h }

// Stats returns what the Reader has decoded so far.
func (r *Reader) Stats() Stats { return r.stats }

// read fills p from the input and adds it to the stream checksum.
func (r *Reader) read(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	return r.readDone(p[:n], err)
}

// readDone accounts for the n bytes a read got and maps its error.
func (r *Reader) readDone(got []byte, err error) error {
	r.sum.Write(got)
	r.stats.WireBytes += uint64(len(got))
	switch err {
	case nil:
		return nil
	case io.EOF, io.ErrUnexpectedEOF:
		return fmt.Errorf("%w: input ends at offset %d, before the trailer", ErrTruncated, r.stats.WireBytes)
	}
	return fmt.Errorf("frame: read at offset %d: %w", r.stats.WireBytes, err)
}

// skip reads and checksums n bytes without keeping them.
func (r *Reader) skip(n int) error {
	for n > 0 {
		k := min(n, len(r.scratch))
		if err := r.read(r.scratch[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func (r *Reader) readUint16() (int, error) {
	if err := r.read(r.scratch[:2]); err != nil {
		return 0, err
	}
	return int(binary.LittleEndian.Uint16(r.scratch[:])), nil
}

// readName reads a name of n bytes. A name longer than the limit is skipped
// (and *long set to its length) so that the header checksum is still checked
// first: a corrupt length is ErrCorrupt, not ErrLimit.
func (r *Reader) readName(n int, long *int) (string, error) {
	if n > r.lim.MaxNameLen {
		*long = n
		return "", r.skip(n)
	}
	name := make([]byte, n)
	if err := r.read(name); err != nil {
		return "", err
	}
	return string(name), nil
}

func corrupt(off uint64, format string, args ...any) error {
	return fmt.Errorf("%w at offset %d: %s", ErrCorrupt, off, fmt.Sprintf(format, args...))
}

func (r *Reader) readHeader() error {
	le := binary.LittleEndian
	p := r.scratch[:6]
	n, err := io.ReadFull(r.r, p)
	if m := min(n, len(Magic)); string(p[:m]) != Magic[:m] {
		return corrupt(0, "not a drfs frame stream (magic %q)", p[:m])
	}
	if err := r.readDone(p[:n], err); err != nil {
		return err
	}
	if p[4] != Version {
		return fmt.Errorf("%w %d.%d (this reader knows major version %d)", ErrVersion, p[4], p[5], Version)
	}

	p = r.scratch[:headerFixed-6+2] // fixed fields and the VM name's length
	if err := r.read(p); err != nil {
		return err
	}
	shift := p[1]
	h := Header{
		Kind:       StreamKind(p[0]),
		Generation: le.Uint64(p[2:]),
		Base:       le.Uint64(p[10:]),
		DiskSize:   le.Uint64(p[18:]),
		Created:    fromUnixNano(int64(le.Uint64(p[26:]))),
	}
	longName := 0
	if h.VM, err = r.readName(int(le.Uint16(p[34:])), &longName); err != nil {
		return err
	}
	if n, err = r.readUint16(); err != nil {
		return err
	}
	if h.Disk, err = r.readName(n, &longName); err != nil {
		return err
	}
	if n, err = r.readUint16(); err != nil {
		return err
	}
	if err := r.skip(n); err != nil { // header extension, for minor versions
		return err
	}

	want := r.sum.Sum64()
	if err := r.read(r.scratch[:8]); err != nil {
		return err
	}
	if got := le.Uint64(r.scratch[:]); got != want {
		return corrupt(0, "header checksum %#016x, computed %#016x", got, want)
	}
	if shift < minBlockShift || shift > maxBlockShift {
		return corrupt(7, "block size 2^%d out of range", shift)
	}
	h.BlockSize = 1 << shift
	if h.BlockSize > r.lim.MaxBlockSize {
		return fmt.Errorf("%w: block size %d > %d", ErrLimit, h.BlockSize, r.lim.MaxBlockSize)
	}
	if longName > 0 {
		return fmt.Errorf("%w: name of %d bytes > %d", ErrLimit, longName, r.lim.MaxNameLen)
	}
	if err := h.validate(maxWireName); err != nil {
		return corrupt(0, "header: %v", err)
	}
	r.h = h
	return nil
}

// Next returns the next record. After the last record it reads and verifies
// the trailer and returns io.EOF: only then is the whole stream known good.
// Record.Data is valid until the next call.
func (r *Reader) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	rec, err := r.record()
	if err != nil {
		r.err = err
		r.release()
		return Record{}, err
	}
	return rec, nil
}

func (r *Reader) release() {
	for _, b := range []**bytebufferpool.ByteBuffer{&r.blk, &r.cbuf} {
		if *b != nil {
			bytebufferpool.Put(*b)
			*b = nil
		}
	}
}

// buffer returns n bytes of *bp, getting it from the pool and sizing it to a
// whole block the first time.
func (r *Reader) buffer(bp **bytebufferpool.ByteBuffer, n int) []byte {
	if *bp == nil {
		*bp = bytebufferpool.Get()
	}
	b := *bp
	if cap(b.B) < n {
		b.B = make([]byte, r.h.BlockSize)
	}
	return b.B[:n]
}

func (r *Reader) record() (Record, error) {
	le := binary.LittleEndian
	off := r.stats.WireBytes
	if err := r.read(r.scratch[:1]); err != nil {
		return Record{}, err
	}
	tag := r.scratch[0]
	switch tag {
	case tagEnd:
		return Record{}, r.trailer()
	case tagZero:
		p := r.scratch[:16]
		if err := r.read(p); err != nil {
			return Record{}, err
		}
		block, count := le.Uint64(p), le.Uint64(p[8:])
		switch {
		case block < r.next:
			return Record{}, corrupt(off, "zero extent at block %d: out of order (previous record ends at %d)", block, r.next)
		case count == 0:
			return Record{}, corrupt(off, "zero extent at block %d: no blocks", block)
		case block >= r.nblocks || count > r.nblocks-block:
			return Record{}, corrupt(off, "zero extent at blocks %d+%d: past the disk's %d blocks", block, count, r.nblocks)
		}
		r.stats.Records++
		r.stats.ZeroBlocks += count
		r.next, r.lastData = block+count, false
		return Record{Kind: KindZero, Block: block, Count: count}, nil
	case tagData, tagNext, tagData | tagLZ4, tagNext | tagLZ4:
		return r.data(off, tag)
	}
	return Record{}, corrupt(off, "unknown record tag %#02x", tag)
}

func (r *Reader) data(off uint64, tag byte) (Record, error) {
	le := binary.LittleEndian
	lz := tag&tagLZ4 != 0
	block := r.next
	if tag&^tagLZ4 == tagData {
		if err := r.read(r.scratch[:8]); err != nil {
			return Record{}, err
		}
		block = le.Uint64(r.scratch[:])
		if block < r.next {
			return Record{}, corrupt(off, "data at block %d: out of order (previous record ends at %d)", block, r.next)
		}
	} else if !r.lastData {
		return Record{}, corrupt(off, "continuation record without a data record before it")
	}
	if block >= r.nblocks {
		return Record{}, corrupt(off, "data at block %d: past the disk's %d blocks", block, r.nblocks)
	}
	n := r.h.blockLen(block)

	clen := 0
	if lz {
		if err := r.read(r.scratch[:4]); err != nil {
			return Record{}, err
		}
		// Compressed only if smaller: this also bounds the buffer.
		if clen = int(le.Uint32(r.scratch[:])); clen == 0 || clen >= n {
			return Record{}, corrupt(off, "data at block %d: compressed length %d for a block of %d", block, clen, n)
		}
	}
	if err := r.read(r.scratch[:8]); err != nil {
		return Record{}, err
	}
	sum := le.Uint64(r.scratch[:])

	data := r.buffer(&r.blk, n)
	if lz {
		src := r.buffer(&r.cbuf, clen)
		if err := r.read(src); err != nil {
			return Record{}, err
		}
		if m, err := lz4.UncompressBlock(src, data); err != nil || m != n {
			return Record{}, corrupt(off, "data at block %d: bad LZ4 payload", block)
		}
		r.stats.Compressed++
	} else if err := r.read(data); err != nil {
		return Record{}, err
	}
	if got := xxh3.Hash(data); got != sum {
		return Record{}, corrupt(off, "data at block %d: checksum %#016x, computed %#016x", block, sum, got)
	}
	r.stats.Records++
	r.stats.DataBlocks++
	r.stats.DataBytes += uint64(n)
	r.next, r.lastData = block+1, true
	return Record{Kind: KindData, Block: block, Count: 1, Data: data}, nil
}

// trailer reads the trailer after the end tag and checks it against the
// stream; it returns io.EOF when all is well.
func (r *Reader) trailer() error {
	le := binary.LittleEndian
	off := r.stats.WireBytes - 1
	p := r.scratch[:trailerLen]
	if err := r.read(p[:trailerLen-8]); err != nil {
		return err
	}
	want := r.sum.Sum64()
	if err := r.read(p[trailerLen-8:]); err != nil {
		return err
	}
	if got := le.Uint64(p[32:]); got != want {
		return corrupt(off, "stream checksum %#016x, computed %#016x", got, want)
	}
	counts := [4]uint64{le.Uint64(p), le.Uint64(p[8:]), le.Uint64(p[16:]), le.Uint64(p[24:])}
	if seen := [4]uint64{r.stats.Records, r.stats.DataBlocks, r.stats.ZeroBlocks, r.stats.DataBytes}; counts != seen {
		return corrupt(off, "trailer counts records/data/zero/bytes %v, stream has %v", counts, seen)
	}
	return io.EOF
}
