package tracker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/zeebo/xxh3"
)

// This file holds every byte format of the tracker: segment files and the
// Pebble keys and values. docs/log-format.md describes them byte by byte;
// change both together and bump formatVersion when old state would be
// misread.

// formatVersion is the version of the state directory layout. Open refuses a
// state directory written with another one (ErrFormat).
const formatVersion = 1

// Kind says what a Record (and a segment record) describes.
type Kind uint8

const (
	// KindData: Blocks whole blocks of data from Block on.
	KindData Kind = 1
	// KindZero: blocks [Block, Block+Blocks) read as zeros.
	KindZero Kind = 2
	// KindSize: the disk is Size bytes long. It is the last record of a
	// disk in a generation; replay truncates (or extends) the disk to it
	// after the data and zero records.
	KindSize Kind = 3
	// KindRemoved: the disk was removed from the source. It is the only
	// record of that disk in the generation.
	KindRemoved Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindZero:
		return "zero"
	case KindSize:
		return "size"
	case KindRemoved:
		return "removed"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Segment files.
const (
	segMagic      = "drfsseg\x00"
	segVersion    = 1
	segHeaderSize = 64

	recHeaderSize = 56
)

var recMagic = [4]byte{'D', 'R', 'L', 'R'}

// segHeader is the first segHeaderSize bytes of a segment file.
type segHeader struct {
	blockSize uint32
	vm        uint32
	gen       uint64
	created   int64 // unix nanoseconds
}

func (h *segHeader) encode(b []byte) {
	_ = b[segHeaderSize-1]
	clear(b[:segHeaderSize])
	copy(b[0:8], segMagic)
	binary.BigEndian.PutUint32(b[8:], segVersion)
	binary.BigEndian.PutUint32(b[12:], h.blockSize)
	binary.BigEndian.PutUint32(b[16:], h.vm)
	binary.BigEndian.PutUint64(b[24:], h.gen)
	binary.BigEndian.PutUint64(b[32:], uint64(h.created))
	binary.BigEndian.PutUint64(b[56:], xxh3.Hash(b[:56]))
}

var errBadSegHeader = errors.New("not a drfs segment file, or a damaged one")

func decodeSegHeader(b []byte) (segHeader, error) {
	if len(b) < segHeaderSize || string(b[0:8]) != segMagic ||
		binary.BigEndian.Uint64(b[56:]) != xxh3.Hash(b[:56]) {
		return segHeader{}, errBadSegHeader
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != segVersion {
		return segHeader{}, fmt.Errorf("segment version %d, this drfs reads %d", v, segVersion)
	}
	return segHeader{
		blockSize: binary.BigEndian.Uint32(b[12:]),
		vm:        binary.BigEndian.Uint32(b[16:]),
		gen:       binary.BigEndian.Uint64(b[24:]),
		created:   int64(binary.BigEndian.Uint64(b[32:])),
	}, nil
}

// recHeader is the header of one segment record. A data record is followed
// by count whole blocks; the other kinds have no payload.
type recHeader struct {
	kind    Kind
	disk    uint32
	block   uint64
	count   uint64 // blocks (data, zero); 0 otherwise
	size    int64  // the disk's size after the change
	maxSize int64  // the largest size the disk had in this generation
}

func (h *recHeader) encode(b []byte) {
	_ = b[recHeaderSize-1]
	copy(b[0:4], recMagic[:])
	b[4] = byte(h.kind)
	b[5], b[6], b[7] = 0, 0, 0
	binary.BigEndian.PutUint32(b[8:], h.disk)
	binary.BigEndian.PutUint32(b[12:], 0)
	binary.BigEndian.PutUint64(b[16:], h.block)
	binary.BigEndian.PutUint64(b[24:], h.count)
	binary.BigEndian.PutUint64(b[32:], uint64(h.size))
	binary.BigEndian.PutUint64(b[40:], uint64(h.maxSize))
	binary.BigEndian.PutUint64(b[48:], xxh3.Hash(b[:48]))
}

// decodeRecHeader returns false for anything that is not a whole, valid
// record header: the end of the written part of a segment.
func decodeRecHeader(b []byte) (recHeader, bool) {
	if len(b) < recHeaderSize || [4]byte(b[0:4]) != recMagic ||
		binary.BigEndian.Uint64(b[48:]) != xxh3.Hash(b[:48]) {
		return recHeader{}, false
	}
	h := recHeader{
		kind:    Kind(b[4]),
		disk:    binary.BigEndian.Uint32(b[8:]),
		block:   binary.BigEndian.Uint64(b[16:]),
		count:   binary.BigEndian.Uint64(b[24:]),
		size:    int64(binary.BigEndian.Uint64(b[32:])),
		maxSize: int64(binary.BigEndian.Uint64(b[40:])),
	}
	if h.kind < KindData || h.kind > KindRemoved || h.size < 0 || h.maxSize < 0 {
		return recHeader{}, false
	}
	return h, true
}

// Pebble keys. Every key starts with one prefix byte.
const (
	keyFormat = 'f' // "f": format version, block size, source
	keyClean  = 'c' // "c": present after a clean Close
	keyVM     = 'v' // "v" vm: VM record
	keyDisk   = 'd' // "d" vm disk: disk record
	keyGen    = 'g' // "g" vm gen: generation record
	keyIndex  = 'i' // "i" vm gen disk block: index entry
	keySize   = 's' // "s" vm disk: the disk's size at the newest cut
	keyHot    = 'h' // "h" vm disk: the byte ranges a flagged disk's resync is limited to
)

// sizeBlock is the block number of the size (or removed) entry of a disk in
// the index: it sorts after every real block.
const sizeBlock = ^uint64(0)

func vmKey(vm uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{keyVM}, vm)
}

func diskKey(vm, disk uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{keyDisk}, vm)
	return binary.BigEndian.AppendUint32(b, disk)
}

func hotKey(vm, disk uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{keyHot}, vm)
	return binary.BigEndian.AppendUint32(b, disk)
}

// encodeHot encodes the hot ranges of a disk: a uvarint count, then each
// range's offset and length as uvarints.
func encodeHot(rs []Extent) []byte {
	b := binary.AppendUvarint(nil, uint64(len(rs)))
	for _, r := range rs {
		b = binary.AppendUvarint(b, uint64(r.Off))
		b = binary.AppendUvarint(b, uint64(r.Len))
	}
	return b
}

func decodeHot(b []byte) ([]Extent, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errors.New("damaged hot ranges")
	}
	b = b[k:]
	rs := make([]Extent, 0, n)
	for i := uint64(0); i < n; i++ {
		off, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return nil, errors.New("damaged hot ranges")
		}
		ln, k2 := binary.Uvarint(b[k1:])
		if k2 <= 0 || int64(off) < 0 || int64(ln) <= 0 {
			return nil, errors.New("damaged hot ranges")
		}
		rs = append(rs, Extent{int64(off), int64(ln)})
		b = b[k1+k2:]
	}
	return rs, nil
}

func sizeKey(vm, disk uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{keySize}, vm)
	return binary.BigEndian.AppendUint32(b, disk)
}

func genKey(vm uint32, gen uint64) []byte {
	b := binary.BigEndian.AppendUint32([]byte{keyGen}, vm)
	return binary.BigEndian.AppendUint64(b, gen)
}

// genIndexPrefix is the first key of a generation's index range; the range
// ends where genIndexPrefix(vm, gen+1) starts.
func genIndexPrefix(vm uint32, gen uint64) []byte {
	b := append(make([]byte, 0, indexKeySize), keyIndex)
	b = binary.BigEndian.AppendUint32(b, vm)
	return binary.BigEndian.AppendUint64(b, gen)
}

const indexKeySize = 1 + 4 + 8 + 4 + 8
const indexValueSize = 1 + 8 + 8

func appendIndexKey(dst []byte, vm uint32, gen uint64, disk uint32, block uint64) []byte {
	dst = append(dst, keyIndex)
	dst = binary.BigEndian.AppendUint32(dst, vm)
	dst = binary.BigEndian.AppendUint64(dst, gen)
	dst = binary.BigEndian.AppendUint32(dst, disk)
	return binary.BigEndian.AppendUint64(dst, block)
}

// indexEntry is one index value: a run of data blocks at slot (offset of
// the first block in the segment), a zero extent, the final size, or the
// removal of the disk.
type indexEntry struct {
	kind  Kind
	count uint64
	arg   int64 // data: segment offset of the first block; size: bytes
}

func appendIndexValue(dst []byte, e indexEntry) []byte {
	dst = append(dst, byte(e.kind))
	dst = binary.BigEndian.AppendUint64(dst, e.count)
	return binary.BigEndian.AppendUint64(dst, uint64(e.arg))
}

func decodeIndex(key, val []byte) (disk uint32, block uint64, e indexEntry, err error) {
	if len(key) != indexKeySize || key[0] != keyIndex || len(val) != indexValueSize {
		return 0, 0, e, fmt.Errorf("damaged index entry %x", key)
	}
	disk = binary.BigEndian.Uint32(key[13:])
	block = binary.BigEndian.Uint64(key[17:])
	e = indexEntry{
		kind:  Kind(val[0]),
		count: binary.BigEndian.Uint64(val[1:]),
		arg:   int64(binary.BigEndian.Uint64(val[9:])),
	}
	if e.kind < KindData || e.kind > KindRemoved {
		return 0, 0, e, fmt.Errorf("damaged index entry %x: kind %d", key, val[0])
	}
	return disk, block, e, nil
}

// formatRecord is the value of the "f" key.
type formatRecord struct {
	version   uint32
	blockSize uint32
	source    string
}

func (r formatRecord) encode() []byte {
	b := binary.BigEndian.AppendUint32(nil, r.version)
	b = binary.BigEndian.AppendUint32(b, r.blockSize)
	return append(b, r.source...)
}

func decodeFormat(b []byte) (formatRecord, error) {
	if len(b) < 4 {
		return formatRecord{}, errors.New("damaged format record")
	}
	r := formatRecord{version: binary.BigEndian.Uint32(b)}
	if r.version != formatVersion {
		return r, nil // the caller reports the version; the rest may differ
	}
	if len(b) < 8 {
		return formatRecord{}, errors.New("damaged format record")
	}
	r.blockSize = binary.BigEndian.Uint32(b[4:])
	r.source = string(b[8:])
	return r, nil
}

// A decoder of the variable-length records below; the first error sticks.
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
		d.err = errors.New("truncated record")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errors.New("truncated record")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errors.New("truncated record")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if uint64(len(d.b)) < n {
		d.err = errors.New("truncated record")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

const recordVersion = 1

// vmRecord is the value of a "v" key.
type vmRecord struct {
	name string
}

func (r vmRecord) encode() []byte {
	return appendString([]byte{recordVersion}, r.name)
}

func decodeVM(b []byte) (vmRecord, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != recordVersion {
		return vmRecord{}, fmt.Errorf("VM record version %d", v)
	}
	r := vmRecord{name: d.string()}
	return r, d.err
}

// Disk record flags.
const (
	diskResync   = 1 << 0
	diskRemoved  = 1 << 1
	diskIdentity = 1 << 2
)

// diskRecord is the value of a "d" key.
type diskRecord struct {
	rel    string // path relative to the source directory
	flags  byte
	size   int64 // identity at the last clean Close
	mtime  int64
	inode  uint64
	reason string
	since  int64 // unix nanoseconds the resync flag was set
}

func (r diskRecord) encode() []byte {
	b := []byte{recordVersion, r.flags}
	b = appendString(b, r.rel)
	b = binary.AppendVarint(b, r.size)
	b = binary.AppendVarint(b, r.mtime)
	b = binary.AppendUvarint(b, r.inode)
	b = appendString(b, r.reason)
	return binary.AppendVarint(b, r.since)
}

func decodeDisk(b []byte) (diskRecord, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != recordVersion {
		return diskRecord{}, fmt.Errorf("disk record version %d", v)
	}
	r := diskRecord{
		flags:  d.byte(),
		rel:    d.string(),
		size:   d.varint(),
		mtime:  d.varint(),
		inode:  d.uvarint(),
		reason: d.string(),
		since:  d.varint(),
	}
	return r, d.err
}

// Generation states.
const (
	genActive = 1
	genFrozen = 2
)

// genDiskStat is what a frozen generation holds for one disk.
type genDiskStat struct {
	disk       uint32
	dataBlocks uint64
	zeroBlocks uint64
	size       int64
	removed    bool
}

// genRecord is the value of a "g" key.
type genRecord struct {
	state   byte
	created int64
	disks   []genDiskStat
}

func (r genRecord) encode() []byte {
	b := []byte{recordVersion, r.state}
	b = binary.AppendVarint(b, r.created)
	b = binary.AppendUvarint(b, uint64(len(r.disks)))
	for _, s := range r.disks {
		b = binary.AppendUvarint(b, uint64(s.disk))
		b = binary.AppendUvarint(b, s.dataBlocks)
		b = binary.AppendUvarint(b, s.zeroBlocks)
		b = binary.AppendVarint(b, s.size)
		var f byte
		if s.removed {
			f = 1
		}
		b = append(b, f)
	}
	return b
}

func decodeGen(b []byte) (genRecord, error) {
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != recordVersion {
		return genRecord{}, fmt.Errorf("generation record version %d", v)
	}
	r := genRecord{state: d.byte(), created: d.varint()}
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.b)) {
		d.err = errors.New("truncated record")
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		r.disks = append(r.disks, genDiskStat{
			disk:       uint32(d.uvarint()),
			dataBlocks: d.uvarint(),
			zeroBlocks: d.uvarint(),
			size:       d.varint(),
			removed:    d.byte()&1 != 0,
		})
	}
	return r, d.err
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}
