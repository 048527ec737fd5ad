package resync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/target"
)

// Cursor is the state of a comparison: where it got to and what it found
// so far. Diff reports it after each window (Progress.Cursor) and when it
// fails (Result.Cursor); Options.Resume continues from it, so a comparison
// cut by a network outage or a restart does not start over.
//
// The caller persists it with Marshal, with the disk's resynchronization
// flag: in the agent's state directory beside the change log, one file per
// disk, replaced atomically (write, fsync, rename). It removes the file
// when the resynchronization commits, and when the disk is flagged again
// (writes since the comparison began may then be missing from the log, so
// the comparison must start over).
//
// A cursor is valid only against its point: once the store's newest point
// moved on (a generation was shipped), Diff starts over. docs/resync.md
// specifies the encoding.
type Cursor struct {
	VM, Disk string
	Gen      uint64  // the point compared
	Size     int64   // the source's size
	Chunks   []int64 // Options.Chunks
	Offset   int64   // bytes of the source compared, from its start
	// Ranges are the differing ranges found in [0, Offset).
	Ranges []target.Extent
	Counts Counts
}

func (c *Cursor) clone() Cursor {
	d := *c
	d.Chunks = slices.Clone(c.Chunks)
	d.Ranges = slices.Clone(c.Ranges)
	d.Counts = c.Counts.clone()
	return d
}

// mismatch says why c cannot resume a comparison of disk of vm at point
// gen, with this source size and these chunk sizes ("" if it can).
func (c *Cursor) mismatch(vm string, gen uint64, disk string, size int64, chunks []int64) string {
	switch {
	case c.VM != vm || c.Disk != disk:
		return fmt.Sprintf("the cursor is of %s/%s", c.VM, c.Disk)
	case c.Gen != gen:
		return fmt.Sprintf("the cursor compared point %d", c.Gen)
	case c.Size != size:
		return fmt.Sprintf("the cursor compared a source of %d bytes", c.Size)
	case !slices.Equal(c.Chunks, chunks):
		return fmt.Sprintf("the cursor compared chunks of %v", c.Chunks)
	case len(c.Counts.Levels) != len(chunks) || c.Offset < 0 || c.Offset > size:
		return "the cursor is inconsistent"
	}
	return ""
}

// Cursor encoding: docs/resync.md.
const (
	cursorMagic   = "DRSC"
	cursorVersion = 1
	maxLevels     = 16
	maxCursorName = 255
)

// ErrBadCursor is the error of Unmarshal on bytes that are not a cursor
// this version wrote (damaged, truncated, or of a newer version).
var ErrBadCursor = errors.New("resync: bad cursor")

// Marshal encodes the cursor (docs/resync.md).
func (c *Cursor) Marshal() []byte {
	b := make([]byte, 0, 64+len(c.VM)+len(c.Disk)+6*len(c.Ranges))
	b = append(b, cursorMagic...)
	b = append(b, cursorVersion)
	b = binary.AppendUvarint(b, uint64(len(c.VM)))
	b = append(b, c.VM...)
	b = binary.AppendUvarint(b, uint64(len(c.Disk)))
	b = append(b, c.Disk...)
	b = binary.AppendUvarint(b, c.Gen)
	b = binary.AppendUvarint(b, uint64(c.Size))
	b = binary.AppendUvarint(b, uint64(c.Offset))
	b = binary.AppendUvarint(b, uint64(len(c.Chunks)))
	for i, ch := range c.Chunks {
		var l Level
		if i < len(c.Counts.Levels) {
			l = c.Counts.Levels[i]
		}
		b = binary.AppendUvarint(b, uint64(ch))
		b = binary.AppendUvarint(b, uint64(l.Compared))
		b = binary.AppendUvarint(b, uint64(l.Differing))
	}
	for _, n := range []int64{c.Counts.SumBytesUp, c.Counts.SumBytesDown, c.Counts.Requests, c.Counts.SourceRead, c.Counts.TargetRead} {
		b = binary.AppendUvarint(b, uint64(n))
	}
	b = binary.AppendUvarint(b, uint64(len(c.Ranges)))
	var end int64
	for _, e := range c.Ranges {
		b = binary.AppendUvarint(b, uint64(e.Off-end))
		b = binary.AppendUvarint(b, uint64(e.Len))
		end = e.Off + e.Len
	}
	return binary.LittleEndian.AppendUint64(b, xxh3.Hash(b))
}

// Unmarshal decodes a cursor that Marshal encoded. Bytes that are not one
// (damaged, cut short, of a newer version) give an error wrapping
// ErrBadCursor: start the comparison over.
func (c *Cursor) Unmarshal(data []byte) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadCursor, fmt.Sprintf(format, args...))
	}
	if len(data) < len(cursorMagic)+1+8 || string(data[:len(cursorMagic)]) != cursorMagic {
		return bad("no cursor magic")
	}
	body, sum := data[:len(data)-8], binary.LittleEndian.Uint64(data[len(data)-8:])
	if xxh3.Hash(body) != sum {
		return bad("checksum mismatch")
	}
	if v := body[len(cursorMagic)]; v != cursorVersion {
		return bad("version %d, want %d", v, cursorVersion)
	}
	d := decoder{b: body[len(cursorMagic)+1:]}
	var out Cursor
	out.VM = d.name()
	out.Disk = d.name()
	out.Gen = d.uvarint()
	out.Size = d.int64()
	out.Offset = d.int64()
	nl := d.uvarint()
	if d.err == nil && (nl == 0 || nl > maxLevels) {
		return bad("%d levels", nl)
	}
	for i := uint64(0); i < nl && d.err == nil; i++ {
		ch := d.int64()
		l := Level{Chunk: ch, Compared: d.int64(), Differing: d.int64()}
		if d.err == nil {
			if err := chunksum.CheckRequest(ch, nil); err != nil || (i > 0 && ch >= out.Chunks[i-1]) {
				return bad("chunk sizes %v then %d", out.Chunks, ch)
			}
		}
		out.Chunks = append(out.Chunks, ch)
		out.Counts.Levels = append(out.Counts.Levels, l)
	}
	for _, p := range []*int64{&out.Counts.SumBytesUp, &out.Counts.SumBytesDown, &out.Counts.Requests, &out.Counts.SourceRead, &out.Counts.TargetRead} {
		*p = d.int64()
	}
	nr := d.uvarint()
	if d.err == nil && nr > uint64(len(d.b))/2 { // each range takes 2 bytes at least
		return bad("%d ranges in %d bytes", nr, len(d.b))
	}
	var end int64
	for i := uint64(0); i < nr && d.err == nil; i++ {
		gap, n := d.int64(), d.int64()
		if d.err != nil {
			break
		}
		if (i > 0 && gap == 0) || n <= 0 || gap > chunksum.MaxOffset-end || n > chunksum.MaxOffset-end-gap {
			return bad("range %d: gap %d, length %d after %d", i, gap, n, end)
		}
		out.Ranges = append(out.Ranges, target.Extent{Off: end + gap, Len: n})
		end += gap + n
	}
	switch {
	case d.err != nil:
		return bad("%v", d.err)
	case len(d.b) != 0:
		return bad("%d bytes after the ranges", len(d.b))
	case out.Offset > out.Size || end > out.Offset:
		return bad("offset %d, size %d, ranges up to %d", out.Offset, out.Size, end)
	}
	*c = out
	return nil
}

// decoder reads uvarints and names; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errors.New("cut short or overlong number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// int64 reads a uvarint that must be an offset or a count.
func (d *decoder) int64() int64 {
	v := d.uvarint()
	if v > chunksum.MaxOffset && d.err == nil {
		d.err = fmt.Errorf("number %d out of range", v)
	}
	return int64(v)
}

func (d *decoder) name() string {
	n := d.uvarint()
	if d.err == nil && (n > maxCursorName || n > uint64(len(d.b))) {
		d.err = fmt.Errorf("name of %d bytes", n)
	}
	if d.err != nil {
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
