// Package chunksum computes the checksums of a disk's chunks that
// resynchronization compares (target.Checksummer specifies them): the one
// implementation that the stores use where their replicas live and that
// package resync uses on the source. It is a leaf: stores import it, not
// resync.
package chunksum

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"sort"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/target"
)

// Of returns the sum of one chunk's bytes (see target.Checksummer):
// ZeroSum if they are all zero, else their XXH3-128 hash.
func Of(chunk []byte) target.Sum {
	if zero.Is(chunk) {
		return target.ZeroSum
	}
	return xxh3.Hash128(chunk).Bytes()
}

// Sums computes what target.Checksummer.Checksums returns, reading
// the disk through r: size is the disk's size and exts its allocated
// ranges in order (nil: all of it may hold data). Bytes outside exts are
// zeros and are not read, so a chunk in a hole costs nothing. It returns
// the sums and the number of bytes read from r.
//
// Stores that read their replica locally implement Checksums with it, and
// resync.Diff uses it on the source and, for a store without the
// capability, on a DiskReader of the replica.
func Sums(ctx context.Context, r io.ReaderAt, size int64, exts []target.Extent, chunk int64, ranges []target.Extent) ([]target.Sum, int64, error) {
	if err := CheckRequest(chunk, ranges); err != nil {
		return nil, 0, err
	}
	var total int64
	for _, rg := range ranges {
		total += rg.Len / chunk
	}
	sums := make([]target.Sum, 0, total)
	bp, piece := Buffer(chunk)
	defer PutBuffer(bp)
	d := Reader{r: r, size: size, exts: exts}
	if len(ranges) > 0 {
		d.ei = sort.Search(len(exts), func(i int) bool { return exts[i].Off+exts[i].Len > ranges[0].Off })
	}
	for _, rg := range ranges {
		for off := rg.Off; off < rg.Off+rg.Len; off += piece {
			if err := ctx.Err(); err != nil {
				return nil, d.read, err
			}
			b := (*bp)[:min(piece, rg.Off+rg.Len-off)]
			data, err := d.ReadAt(b, off)
			if err != nil {
				return nil, d.read, err
			}
			for c := int64(0); c < int64(len(b)); c += chunk {
				if data {
					sums = append(sums, Of(b[c:c+chunk]))
				} else {
					sums = append(sums, target.ZeroSum)
				}
			}
		}
	}
	return sums, d.read, nil
}

// OfReader is Sums of a point's DiskReader, reading only its extents.
func OfReader(ctx context.Context, r target.DiskReader, chunk int64, ranges []target.Extent) ([]target.Sum, int64, error) {
	exts, err := r.Extents()
	if err != nil {
		return nil, 0, err
	}
	if exts == nil {
		exts = []target.Extent{} // a reader with no extents holds no data
	}
	return Sums(ctx, r, r.Size(), exts, chunk, ranges)
}

// pieceSize is how much Sums and resync.Diff read at once, at least.
const pieceSize = 1 << 20

var pieceBufs = sync.Pool{New: func() any { b := make([]byte, pieceSize); return &b }}

// Buffer returns a pooled buffer of piece bytes, the size to read a disk
// at once in chunks of chunk bytes; PutBuffer gives it back.
func Buffer(chunk int64) (buf *[]byte, piece int64) {
	bp := pieceBufs.Get().(*[]byte)
	piece = max(chunk, pieceSize)
	if int64(len(*bp)) < piece {
		*bp = make([]byte, piece)
	}
	return bp, piece
}

// PutBuffer returns a buffer of Buffer to the pool.
func PutBuffer(bp *[]byte) { pieceBufs.Put(bp) }

// Reader reads a disk whose data lies only in its extents, at increasing
// offsets, counting the bytes it read.
type Reader struct {
	r    io.ReaderAt
	size int64
	exts []target.Extent // nil: everything below size may be data
	ei   int             // first extent that may still matter
	read int64           // bytes read from r
}

// NewReader returns a Reader of the disk read by r, of size bytes, whose
// data lies only in exts (in order; nil: anywhere below size).
func NewReader(r io.ReaderAt, size int64, exts []target.Extent) *Reader {
	return &Reader{r: r, size: size, exts: exts}
}

// BytesRead returns how many bytes the Reader read from its disk.
func (d *Reader) BytesRead() int64 { return d.read }

// ReadAt fills b with the disk's bytes at off (zeros past the size and in
// holes) and reports whether any of them came from an extent. off never
// goes down from one call to the next.
func (d *Reader) ReadAt(b []byte, off int64) (data bool, err error) {
	end := min(off+int64(len(b)), d.size)
	pos := off // b is filled up to pos
	fill := func(from, to int64) error {
		from = max(from, pos) // overlapping extents read once
		if from >= to {
			return nil
		}
		clear(b[pos-off : from-off])
		n, err := d.r.ReadAt(b[from-off:to-off], from)
		d.read += int64(n)
		if err == io.EOF {
			clear(b[from-off+int64(n) : to-off]) // a file shorter than the disk
			err = nil
		}
		if err != nil {
			return fmt.Errorf("chunksum: reading %d bytes at %d: %w", to-from, from, err)
		}
		data, pos = true, to
		return nil
	}
	if d.exts == nil {
		err = fill(off, end)
	} else {
		for d.ei < len(d.exts) && d.exts[d.ei].Off+d.exts[d.ei].Len <= off {
			d.ei++
		}
		for i := d.ei; i < len(d.exts) && d.exts[i].Off < end && err == nil; i++ {
			e := d.exts[i]
			err = fill(max(e.Off, off), min(e.Off+e.Len, end))
		}
	}
	if err != nil {
		return false, err
	}
	if data {
		clear(b[pos-off:])
	}
	return data, nil
}

// CheckRequest returns a permanent error if chunk and ranges break the
// rules of a target.Checksummer request.
func CheckRequest(chunk int64, ranges []target.Extent) error {
	if chunk < target.MinChunk || chunk > target.MaxChunk || bits.OnesCount64(uint64(chunk)) != 1 {
		return badRequest("chunk size %d is not a power of two from %d to %d", chunk, target.MinChunk, target.MaxChunk)
	}
	var next, n int64
	for i, rg := range ranges {
		switch {
		case rg.Off < next || rg.Len <= 0 || rg.Off%chunk != 0 || rg.Len%chunk != 0:
			return badRequest("range %d [%d, +%d) is empty, out of order, overlapping or not aligned to chunks of %d", i, rg.Off, rg.Len, chunk)
		case rg.Off > MaxOffset || rg.Len > MaxOffset-rg.Off:
			return badRequest("range %d [%d, +%d) reaches past %d", i, rg.Off, rg.Len, int64(MaxOffset))
		}
		n += rg.Len / chunk
		if n > target.MaxSums {
			return badRequest("more than %d chunks in one request", target.MaxSums)
		}
		next = rg.Off + rg.Len
	}
	return nil
}

// MaxOffset bounds the offsets of a request (8 EiB would overflow).
const MaxOffset = 1 << 62

// RequestError is a request that breaks the rules of a Checksums call. It
// is permanent.
type RequestError struct{ msg string }

func (e *RequestError) Error() string   { return "bad checksum request: " + e.msg }
func (e *RequestError) Permanent() bool { return true }

func badRequest(format string, args ...any) error {
	return &RequestError{msg: fmt.Sprintf(format, args...)}
}
