// Package frame is the versioned block-stream codec between the shipper and
// the target stores. One stream carries one generation of one disk of one VM,
// or one resynchronization batch of differing chunks, in the same format.
//
// A stream is a header (who, which generation, block size, final disk size),
// records in ascending block order (a data block, LZ4-compressed when that
// saves space, with an xxh3-64 checksum of its uncompressed bytes; or an
// extent of zero blocks), and a trailer with counts and an xxh3-64 checksum of
// every byte before it. docs/format.md specifies the bytes.
//
// Writer encodes and Reader decodes, both streaming: neither holds more than
// one block (plus a fixed-size buffer) in memory, and Reader allocates at
// most what its Limits allow, whatever the input claims.
//
// A Reader verifies each data block as it returns it, but the stream as a
// whole (block numbers, zero extents, counts) only when Next returns io.EOF.
// A target must therefore stage records and make nothing visible until then
// (invariant 5 in the design), and treat any other error as a failed stream.
package frame

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"time"
	"unicode/utf8"
)

// Format constants.
const (
	// Magic opens every stream.
	Magic = "DRFS"
	// Version is the major format version this package writes and the newest
	// one it reads. Readers refuse newer major versions with ErrVersion.
	Version = 1
	// MinorVersion is the minor version this package writes. Readers accept
	// any minor version of a major they know (see docs/format.md).
	MinorVersion = 0

	MinBlockSize = 512     // smallest block size the format allows
	MaxBlockSize = 1 << 20 // largest block size the format allows
	MaxNameLen   = 255     // longest VM or disk name, in bytes, a Writer accepts
)

const (
	minBlockShift = 9
	maxBlockShift = 20
	maxWireName   = math.MaxUint16 // the name length field is a uint16
)

// Errors a Reader returns, wrapped with detail; test with errors.Is. All four
// are permanent: reading the same bytes again gives the same error.
var (
	// ErrCorrupt: the bytes are not a valid stream (bad magic, checksum
	// mismatch, records out of order, fields out of range, ...).
	ErrCorrupt = errors.New("frame: corrupt stream")
	// ErrTruncated: the input ended before the trailer. The bytes read so far
	// were a valid prefix as far as they went; resending the stream may help.
	ErrTruncated = errors.New("frame: truncated stream")
	// ErrVersion: the stream has a major format version this reader does not
	// know (written by a newer drfs).
	ErrVersion = errors.New("frame: unsupported format version")
	// ErrLimit: the stream is well formed but exceeds the reader's Limits.
	ErrLimit = errors.New("frame: stream exceeds reader limits")
)

// StreamKind says what a stream carries.
type StreamKind uint8

const (
	// StreamGeneration carries the blocks changed in one generation.
	StreamGeneration StreamKind = 1
	// StreamResync carries the chunks a resynchronization found different.
	StreamResync StreamKind = 2
)

func (k StreamKind) String() string {
	switch k {
	case StreamGeneration:
		return "generation"
	case StreamResync:
		return "resync"
	}
	return fmt.Sprintf("StreamKind(%d)", uint8(k))
}

// Header describes a stream. It is written first and protected by its own
// checksum, so a Reader knows it is good before any record is read.
type Header struct {
	Kind StreamKind
	VM   string // protected item name: 1..MaxNameLen bytes of UTF-8, no NUL
	Disk string // disk name within the VM: same rules as VM

	// Generation is the generation (recovery point) this stream brings the
	// replica to. Base is the one it applies on top of, 0 for none (an
	// empty replica). For StreamGeneration, Base < Generation.
	Generation uint64
	Base       uint64

	// BlockSize is a power of two in [MinBlockSize, MaxBlockSize]. Every
	// data block is BlockSize bytes, except the last block of the disk when
	// DiskSize is not a multiple of BlockSize.
	BlockSize int
	// DiskSize is the size of the disk after this stream is applied. No
	// record reaches past it.
	DiskSize uint64
	// Created is when the stream was produced, kept to the nanosecond (in
	// UTC when decoded). The zero Time means unset.
	Created time.Time
}

// Blocks returns the number of blocks of the disk, counting a final partial
// block: records address blocks 0 to Blocks()-1. h must be valid.
func (h Header) Blocks() uint64 {
	n := h.DiskSize / uint64(h.BlockSize)
	if h.DiskSize%uint64(h.BlockSize) != 0 {
		n++
	}
	return n
}

// blockLen returns the length of block b (b < Blocks()).
func (h *Header) blockLen(b uint64) int {
	off := b * uint64(h.BlockSize)
	if rest := h.DiskSize - off; rest < uint64(h.BlockSize) {
		return int(rest)
	}
	return h.BlockSize
}

// validate checks the fields the format constrains; maxName is the longest
// name allowed.
func (h *Header) validate(maxName int) error {
	if h.Kind != StreamGeneration && h.Kind != StreamResync {
		return fmt.Errorf("unknown stream kind %d", uint8(h.Kind))
	}
	if err := validName("VM", h.VM, maxName); err != nil {
		return err
	}
	if err := validName("disk", h.Disk, maxName); err != nil {
		return err
	}
	if h.Kind == StreamGeneration && h.Base >= h.Generation {
		return fmt.Errorf("base generation %d is not before generation %d", h.Base, h.Generation)
	}
	bs := h.BlockSize
	if bs < MinBlockSize || bs > MaxBlockSize || bs&(bs-1) != 0 {
		return fmt.Errorf("block size %d is not a power of two in [%d, %d]", bs, MinBlockSize, MaxBlockSize)
	}
	return nil
}

func validName(what, s string, maxName int) error {
	switch {
	case s == "":
		return fmt.Errorf("empty %s name", what)
	case len(s) > maxName:
		return fmt.Errorf("%s name is %d bytes, longer than %d", what, len(s), maxName)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s name %q is not UTF-8", what, s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return fmt.Errorf("%s name %q contains NUL", what, s)
		}
	}
	return nil
}

func blockShift(bs int) uint8 { return uint8(bits.TrailingZeros(uint(bs))) }

// unixNano encodes t for the header: 0 for the zero Time.
func unixNano(t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, nil
	}
	// UnixNano is undefined outside about 1678..2262.
	if y := t.Year(); y < 1678 || y > 2261 {
		return 0, fmt.Errorf("creation time %v out of range", t)
	}
	return t.UnixNano(), nil
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// RecordKind says what a Record holds.
type RecordKind uint8

const (
	// KindData is one block of data.
	KindData RecordKind = 1
	// KindZero is an extent of blocks that read as zeros.
	KindZero RecordKind = 2
)

func (k RecordKind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindZero:
		return "zero"
	}
	return fmt.Sprintf("RecordKind(%d)", uint8(k))
}

// Record is one decoded record. Records come in ascending, non-overlapping
// block order.
type Record struct {
	Kind  RecordKind
	Block uint64 // first block
	Count uint64 // blocks covered: 1 for data, >= 1 for zero
	// Data is the uncompressed block for KindData, already checked against
	// its checksum: Header.BlockSize bytes, or fewer for the disk's final
	// partial block. It is nil for KindZero. Reader reuses it: it is valid
	// only until the next call to Next.
	Data []byte
}

// Stats counts what a Writer wrote or a Reader read so far.
type Stats struct {
	Records    uint64 // data blocks + zero extents
	DataBlocks uint64
	ZeroBlocks uint64 // blocks covered by zero extents
	DataBytes  uint64 // uncompressed bytes of the data blocks
	Compressed uint64 // data blocks stored LZ4-compressed
	WireBytes  uint64 // stream bytes: header, records and, once done, trailer
}

// Limits bound what a Reader accepts and allocates. The zero value of a
// field means its default.
type Limits struct {
	// MaxBlockSize is the largest header block size accepted; the Reader
	// allocates at most about twice this. Default and ceiling MaxBlockSize.
	MaxBlockSize int
	// MaxNameLen is the longest VM or disk name accepted. Default
	// MaxNameLen; at most 65535 (the field's width).
	MaxNameLen int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBlockSize <= 0 || l.MaxBlockSize > MaxBlockSize {
		l.MaxBlockSize = MaxBlockSize
	}
	if l.MaxNameLen <= 0 {
		l.MaxNameLen = MaxNameLen
	}
	if l.MaxNameLen > maxWireName {
		l.MaxNameLen = maxWireName
	}
	return l
}

// Wire layout; docs/format.md is the specification.
const (
	headerFixed = 40 // magic .. created, before the variable-length names
	trailerLen  = 40 // after the end tag: four counts and the stream checksum

	tagEnd  = 0x00
	tagData = 0x01 // data at an explicit block
	tagNext = 0x02 // data at the block after the previous data record
	tagZero = 0x03
	tagLZ4  = 0x80 // flag on tagData and tagNext: payload is LZ4-compressed
)
