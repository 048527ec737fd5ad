package dirstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/zeebo/xxh3"
)

// A staged disk is two files. Stage writes the verified blocks of the
// stream into a blocks file; the staged record (staging/<gen>/<disk>) says
// what the stream changes: its ranges of data (to be copied from the blocks
// file) and of zeros (to be punched), in disk order, and names the blocks
// file. docs/dirstore-format.md specifies the record's bytes.
//
// The blocks file has one of two layouts, chosen at Stage:
//
//   - image, for a disk the newest point does not hold: each block at its
//     disk offset, the rest holes, the file as long as the disk. Commit
//     makes it the replica by a hard link: no byte is written twice.
//   - packed, for a disk the replica already holds: the data extents one
//     after the other. Commit copies them into the replica in the kernel
//     (copy_file_range). A packed file is written sequentially and removed
//     cheaply, where an image of scattered small blocks is an expensive
//     file to build and to delete.
//
// Either way Commit decodes nothing: the data was verified at Stage.
const (
	stagedMagic     = "DRFSSTGD"
	stagedVersion   = 1
	stagedHeaderLen = 64
	stagedExtentLen = 17
	stagedNameMax   = 64

	extentData = 1 // the range holds data: copy it from the blocks file
	extentZero = 2 // the range reads as zeros: punch it
)

var errStagedCorrupt = errors.New("corrupt staged record")

// stagedExtent is one range of a staged record.
type stagedExtent struct {
	off, len int64
	zero     bool
}

// staged is a staged record: what one disk's stream of a generation
// changes.
type staged struct {
	gen       uint64
	base      uint64 // the stream header's Base
	blockSize int64
	diskSize  int64
	dataBytes int64  // uncompressed data bytes of the stream, for Point.Bytes
	packed    bool   // the blocks file holds the data extents back to back, not an image
	blocks    string // name of the blocks file in blocks/<gen>/
	extents   []stagedExtent
}

// stagedPacked is the flag of a packed blocks file in the record.
const stagedPacked = 1 << 0

// errStop ends an each walk early without an error.
var errStop = errors.New("stop")

// each calls fn with every extent and, for a data extent, the offset of its
// bytes in the blocks file (-1 for a zero extent), in order. fn returning
// errStop ends the walk with nil.
func (st *staged) each(fn func(e stagedExtent, at int64) error) error {
	pos := int64(0)
	for _, e := range st.extents {
		at := int64(-1)
		if !e.zero {
			at = e.off
			if st.packed {
				at = pos
				pos += e.len
			}
		}
		if err := fn(e, at); err != nil {
			if err == errStop {
				return nil
			}
			return err
		}
	}
	return nil
}

// blocksSize is the length the blocks file must have.
func (st *staged) blocksSize() int64 {
	if !st.packed {
		return st.diskSize
	}
	var n int64
	for _, e := range st.extents {
		if !e.zero {
			n += e.len
		}
	}
	return n
}

// add appends [off, off+n) of the given kind, merging it with the previous
// extent when they touch and are of the same kind.
func (st *staged) add(off, n int64, zero bool) {
	if n <= 0 {
		return
	}
	if k := len(st.extents) - 1; k >= 0 {
		if e := &st.extents[k]; e.zero == zero && e.off+e.len == off {
			e.len += n
			return
		}
	}
	st.extents = append(st.extents, stagedExtent{off: off, len: n, zero: zero})
}

// marshal encodes the record: header, blocks file name, extents, checksum.
func (st *staged) marshal() []byte {
	le := binary.LittleEndian
	b := make([]byte, stagedHeaderLen, stagedHeaderLen+2+len(st.blocks)+len(st.extents)*stagedExtentLen+8)
	copy(b, stagedMagic)
	le.PutUint16(b[8:], stagedVersion)
	if st.packed {
		le.PutUint16(b[10:], stagedPacked)
	}
	le.PutUint32(b[12:], uint32(st.blockSize))
	le.PutUint64(b[16:], st.gen)
	le.PutUint64(b[24:], st.base)
	le.PutUint64(b[32:], uint64(st.diskSize))
	le.PutUint64(b[40:], uint64(st.dataBytes))
	le.PutUint64(b[48:], uint64(len(st.extents)))
	b = le.AppendUint16(b, uint16(len(st.blocks)))
	b = append(b, st.blocks...)
	for _, e := range st.extents {
		b = le.AppendUint64(b, uint64(e.off))
		b = le.AppendUint64(b, uint64(e.len))
		kind := byte(extentData)
		if e.zero {
			kind = extentZero
		}
		b = append(b, kind)
	}
	return le.AppendUint64(b, xxh3.Hash(b))
}

// unmarshalStaged decodes and checks a staged record: checksum, then the
// order and bounds of its extents. A damaged record is errStagedCorrupt.
func unmarshalStaged(b []byte) (*staged, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", errStagedCorrupt, fmt.Sprintf(format, args...))
	}
	le := binary.LittleEndian
	if len(b) < stagedHeaderLen+2+8 {
		return nil, bad("%d bytes", len(b))
	}
	body := b[:len(b)-8]
	switch {
	case string(b[:8]) != stagedMagic:
		return nil, bad("magic %q", b[:8])
	case le.Uint64(b[len(b)-8:]) != xxh3.Hash(body):
		return nil, bad("checksum")
	case le.Uint16(b[8:]) != stagedVersion:
		return nil, bad("version %d", le.Uint16(b[8:]))
	}
	flags := le.Uint16(b[10:])
	if flags&^stagedPacked != 0 {
		return nil, bad("flags %#x", flags)
	}
	st := &staged{
		packed:    flags&stagedPacked != 0,
		blockSize: int64(le.Uint32(b[12:])),
		gen:       le.Uint64(b[16:]),
		base:      le.Uint64(b[24:]),
		diskSize:  int64(le.Uint64(b[32:])),
		dataBytes: int64(le.Uint64(b[40:])),
	}
	count := le.Uint64(b[48:])
	nameLen := int(le.Uint16(b[stagedHeaderLen:]))
	rest := body[stagedHeaderLen+2:]
	if nameLen == 0 || nameLen > stagedNameMax || nameLen > len(rest) {
		return nil, bad("blocks file name of %d bytes", nameLen)
	}
	st.blocks, rest = string(rest[:nameLen]), rest[nameLen:]
	if !validBlocksName(st.blocks) {
		return nil, bad("blocks file name %q", st.blocks)
	}
	if st.diskSize < 0 || st.blockSize <= 0 || count != uint64(len(rest))/stagedExtentLen || len(rest)%stagedExtentLen != 0 {
		return nil, bad("size %d, block size %d, %d extents in %d bytes", st.diskSize, st.blockSize, count, len(rest))
	}
	st.extents = make([]stagedExtent, count)
	end := int64(0)
	for i := range st.extents {
		x := rest[i*stagedExtentLen:]
		e := stagedExtent{off: int64(le.Uint64(x)), len: int64(le.Uint64(x[8:]))}
		switch x[16] {
		case extentZero:
			e.zero = true
		case extentData:
		default:
			return nil, bad("extent %d: kind %d", i, x[16])
		}
		if e.off < end || e.len <= 0 || e.off > st.diskSize-e.len {
			return nil, bad("extent %d: %d+%d after %d, size %d", i, e.off, e.len, end, st.diskSize)
		}
		end = e.off + e.len
		st.extents[i] = e
	}
	return st, nil
}

// validBlocksName reports whether name is a plain file name, as randomName
// makes them: a damaged record cannot point outside blocks/<gen>/.
func validBlocksName(name string) bool {
	return name != "" && name[0] != '.' && !strings.ContainsAny(name, "/\\\x00")
}

// readStaged reads the staged record of disk of generation gen.
func (s *Store) readStaged(vm string, gen uint64, disk string) (*staged, error) {
	b, err := s.root.ReadFile(stagedPath(vm, gen, disk))
	if err != nil {
		return nil, err
	}
	st, err := unmarshalStaged(b)
	if err != nil {
		return nil, fmt.Errorf("dirstore: staged %s/%s generation %d: %w", vm, disk, gen, err)
	}
	if st.gen != gen {
		return nil, fmt.Errorf("dirstore: staged %s/%s generation %d: %w: it is of generation %d", vm, disk, gen, errStagedCorrupt, st.gen)
	}
	return st, nil
}

// openBlocks opens the blocks file of a staged record.
func (s *Store) openBlocks(vm string, st *staged) (*os.File, error) {
	return s.root.Open(blocksPath(vm, st.gen, st.blocks))
}
