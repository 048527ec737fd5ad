package frame

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pierrec/lz4/v4"
	"github.com/zeebo/xxh3"
)

// stride returns the step for offset-by-offset tests: every offset for small
// streams, a sample for ones with big blocks (each of their decodes
// decompresses megabytes) and, with -short, for big ones.
func stride(stream []byte) int {
	switch {
	case len(stream) > 7 && stream[7] > 16:
		return 31
	case len(stream) > 10000 && testing.Short():
		return 97
	}
	return 1
}

// TestTruncated cuts every golden stream at every offset: always ErrTruncated,
// since what is there is a valid prefix.
func TestTruncated(t *testing.T) {
	for name, stream := range goldenStreams(t) {
		step := stride(stream)
		for n := 0; n < len(stream); n++ {
			if n%step != 0 && n < len(stream)-64 {
				continue
			}
			_, _, err := decodeAll(bytes.NewReader(stream[:n]), Limits{})
			if !errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("%s cut at %d of %d: got %v, want ErrTruncated", name, n, len(stream), err)
			}
		}
	}
}

// TestCorrupt flips every byte of the golden streams, whole and bit by bit:
// never silently accepted.
func TestCorrupt(t *testing.T) {
	classes := map[string]int{}
	for name, stream := range goldenStreams(t) {
		step := stride(stream)
		buf := bytes.Clone(stream)
		for i := 0; i < len(stream); i += step {
			for _, mask := range []byte{0xff, 1 << (i % 8)} {
				buf[i] ^= mask
				_, _, err := decodeAll(bytes.NewReader(buf), Limits{})
				buf[i] ^= mask
				switch {
				case err == nil:
					t.Fatalf("%s with byte %d ^ %#x: decoded without error", name, i, mask)
				case errors.Is(err, ErrCorrupt):
					classes["corrupt"]++
				case errors.Is(err, ErrTruncated):
					classes["truncated"]++ // a length grew past the end
				case errors.Is(err, ErrVersion):
					classes["version"]++
				default:
					t.Fatalf("%s with byte %d ^ %#x: unexpected error %v", name, i, mask, err)
				}
			}
		}
	}
	t.Logf("errors by kind: %v", classes)
}

// craft builds streams byte by byte, for inputs the Writer refuses to make.
type craft struct {
	b      []byte
	hdrLen int
}

func newCraft(h Header) *craft {
	created, _ := unixNano(h.Created)
	b := appendHeader(nil, &h, created)
	return &craft{b: b, hdrLen: len(b)}
}

// header changes the header with f and recomputes its checksum.
func (c *craft) header(f func(b []byte)) *craft {
	f(c.b)
	binary.LittleEndian.PutUint64(c.b[c.hdrLen-8:], xxh3.Hash(c.b[:c.hdrLen-8]))
	return c
}

func (c *craft) add(fields ...any) *craft {
	for _, f := range fields {
		switch v := f.(type) {
		case byte:
			c.b = append(c.b, v)
		case uint32:
			c.b = binary.LittleEndian.AppendUint32(c.b, v)
		case uint64:
			c.b = binary.LittleEndian.AppendUint64(c.b, v)
		case int:
			c.b = binary.LittleEndian.AppendUint64(c.b, uint64(v))
		case []byte:
			c.b = append(c.b, v...)
		default:
			panic("craft: bad field")
		}
	}
	return c
}

// end adds the end tag and a trailer with the given counts (records, data
// blocks, zero blocks, data bytes) and a correct stream checksum.
func (c *craft) end(counts ...uint64) []byte {
	c.add(byte(tagEnd))
	for _, n := range counts {
		c.add(n)
	}
	return binary.LittleEndian.AppendUint64(c.b, xxh3.Hash(c.b))
}

func lz4Block(t testing.TB, data []byte) []byte {
	dst := make([]byte, lz4.CompressBlockBound(len(data)))
	n, err := lz4.CompressBlock(data, dst, nil)
	if err != nil || n == 0 {
		t.Fatalf("lz4: %d, %v", n, err)
	}
	return dst[:n]
}

func TestCrafted(t *testing.T) {
	h := testHeader(512, 10*512+100) // 11 blocks, the last of 100 bytes
	blk := bytes.Repeat([]byte("0123456789abcdef"), 32)
	sum := xxh3.Hash(blk)
	z := lz4Block(t, blk)
	zlen := uint32(len(z))
	tail := blk[:100]
	nc := func() *craft { return newCraft(h) }
	ver := func(major, minor byte) func([]byte) { return func(b []byte) { b[4], b[5] = major, minor } }
	hdrByte := func(i int, v byte) func([]byte) { return func(b []byte) { b[i] = v } }

	cases := []struct {
		name   string
		stream []byte
		lim    Limits
		want   error // nil: decodes
	}{
		{"valid", nc().add(byte(tagData), 3, sum, blk).add(byte(tagNext|tagLZ4), zlen, sum, z).end(2, 2, 0, 1024), Limits{}, nil},
		{"valid final short block", nc().add(byte(tagData), 10, xxh3.Hash(tail), tail).end(1, 1, 0, 100), Limits{}, nil},
		{"valid: data at next, explicit", nc().add(byte(tagData), 3, sum, blk, byte(tagData), 4, sum, blk).end(2, 2, 0, 1024), Limits{}, nil},
		{"valid: adjacent zero extents", nc().add(byte(tagZero), 0, 2, byte(tagZero), 2, 9).end(2, 0, 11, 0), Limits{}, nil},
		{"valid: newer minor with extension", func() []byte {
			c := nc().header(ver(Version, 9))
			ext := []byte{0, 0, 'x', 'y', 'z'} // extension length 0 -> 3, then the bytes
			at := c.hdrLen - 8 - 2
			binary.LittleEndian.PutUint16(ext, 3)
			c.b = append(c.b[:at], append(ext, c.b[at+2:]...)...)
			c.hdrLen += 3
			return c.header(func([]byte) {}).end(0, 0, 0, 0)
		}(), Limits{}, nil},
		{"valid: name of 300 bytes within limits", func() []byte {
			h := h
			h.VM = strings.Repeat("v", 300)
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{MaxNameLen: 300}, nil},

		{"empty input", nil, Limits{}, ErrTruncated},
		{"magic prefix", []byte("DR"), Limits{}, ErrTruncated},
		{"bad magic", []byte("DRFX\x01\x00"), Limits{}, ErrCorrupt},
		{"bad short magic", []byte("X"), Limits{}, ErrCorrupt},
		{"not a stream", []byte("hello, world, this is not a frame stream"), Limits{}, ErrCorrupt},
		{"major 2", nc().header(ver(2, 0)).end(0, 0, 0, 0), Limits{}, ErrVersion},
		{"major 0", nc().header(ver(0, 1)).end(0, 0, 0, 0), Limits{}, ErrVersion},
		{"major 255, nothing else", []byte("DRFS\xff\x00"), Limits{}, ErrVersion},
		{"header checksum wrong", func() []byte { c := nc(); c.b[c.hdrLen-1] ^= 1; return c.end(0, 0, 0, 0) }(), Limits{}, ErrCorrupt},
		{"header field changed", func() []byte { c := nc(); c.b[8] ^= 1; return c.end(0, 0, 0, 0) }(), Limits{}, ErrCorrupt},
		{"kind 0", nc().header(hdrByte(6, 0)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"kind 3", nc().header(hdrByte(6, 3)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"block shift 8", nc().header(hdrByte(7, 8)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"block shift 21", nc().header(hdrByte(7, 21)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"block shift 255", nc().header(hdrByte(7, 255)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"block size over limit", nc().header(hdrByte(7, 20)).end(0, 0, 0, 0), Limits{MaxBlockSize: 64 << 10}, ErrLimit},
		{"base = generation", nc().header(func(b []byte) { copy(b[16:], b[8:16]) }).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"empty VM name", func() []byte {
			h := h
			h.VM = ""
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{}, ErrCorrupt},
		{"NUL in disk name", func() []byte {
			h := h
			h.Disk = "a\x00"
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{}, ErrCorrupt},
		{"disk name not UTF-8", func() []byte {
			h := h
			h.Disk = "\xc3("
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{}, ErrCorrupt},
		{"name over limit", func() []byte {
			h := h
			h.VM = strings.Repeat("v", 300)
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{}, ErrLimit},
		{"name over limit, header checksum wrong", func() []byte {
			h := h
			h.VM = strings.Repeat("v", 300)
			c := newCraft(h)
			c.b[c.hdrLen-1] ^= 1
			return c.end(0, 0, 0, 0)
		}(), Limits{}, ErrCorrupt},

		{"unknown tag 4", nc().add(byte(4)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"unknown tag 0x40", nc().add(byte(0x40)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"zero with LZ4 flag", nc().add(byte(tagZero|tagLZ4), 0, 1).end(1, 0, 1, 0), Limits{}, ErrCorrupt},
		{"end with LZ4 flag", nc().add(byte(tagEnd|tagLZ4)).end(0, 0, 0, 0), Limits{}, ErrCorrupt},
		{"continuation first", nc().add(byte(tagNext), sum, blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"continuation after zero", nc().add(byte(tagZero), 0, 1, byte(tagNext), sum, blk).end(2, 1, 1, 512), Limits{}, ErrCorrupt},
		{"continuation past the disk", nc().add(byte(tagData), 10, xxh3.Hash(tail), tail, byte(tagNext), sum, blk).end(2, 2, 0, 612), Limits{}, ErrCorrupt},
		{"data repeated", nc().add(byte(tagData), 3, sum, blk, byte(tagData), 3, sum, blk).end(2, 2, 0, 1024), Limits{}, ErrCorrupt},
		{"data descending", nc().add(byte(tagData), 3, sum, blk, byte(tagData), 2, sum, blk).end(2, 2, 0, 1024), Limits{}, ErrCorrupt},
		{"data inside zero extent", nc().add(byte(tagZero), 2, 3, byte(tagData), 4, sum, blk).end(2, 1, 3, 512), Limits{}, ErrCorrupt},
		{"data past the disk", nc().add(byte(tagData), 11, sum, blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"data far past the disk", nc().add(byte(tagData), uint64(1<<64-1), sum, blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"data checksum wrong", nc().add(byte(tagData), 3, sum^1, blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"data final block too long", nc().add(byte(tagData), 10, xxh3.Hash(blk), blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"lz4 length 0", nc().add(byte(tagData|tagLZ4), 3, uint32(0), sum).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"lz4 length = block", nc().add(byte(tagData|tagLZ4), 3, uint32(512), sum, blk).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"lz4 length huge", nc().add(byte(tagData|tagLZ4), 3, uint32(1<<32-1), sum).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"lz4 length = final block", nc().add(byte(tagData|tagLZ4), 10, uint32(100), xxh3.Hash(tail), tail).end(1, 1, 0, 100), Limits{}, ErrCorrupt},
		{"lz4 garbage", nc().add(byte(tagData|tagLZ4), 3, uint32(20), sum, bytes.Repeat([]byte{0xff}, 20)).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"lz4 decodes short", func() []byte {
			short := lz4Block(t, blk[:256])
			return nc().add(byte(tagData|tagLZ4), 3, uint32(len(short)), sum, short).end(1, 1, 0, 512)
		}(), Limits{}, ErrCorrupt},
		{"lz4 decodes to other data", nc().add(byte(tagData|tagLZ4), 3, zlen, sum^1, z).end(1, 1, 0, 512), Limits{}, ErrCorrupt},
		{"zero count 0", nc().add(byte(tagZero), 3, 0).end(1, 0, 0, 0), Limits{}, ErrCorrupt},
		{"zero past the disk", nc().add(byte(tagZero), 3, 9).end(1, 0, 9, 0), Limits{}, ErrCorrupt},
		{"zero count overflows", nc().add(byte(tagZero), 3, uint64(1<<64-1)).end(1, 0, 0, 0), Limits{}, ErrCorrupt},
		{"zero overlaps data", nc().add(byte(tagData), 3, sum, blk, byte(tagZero), 3, 1).end(2, 1, 1, 512), Limits{}, ErrCorrupt},
		{"zero overlaps zero", nc().add(byte(tagZero), 3, 2, byte(tagZero), 4, 1).end(2, 0, 3, 0), Limits{}, ErrCorrupt},
		{"trailer checksum wrong", func() []byte { b := nc().end(0, 0, 0, 0); b[len(b)-1] ^= 1; return b }(), Limits{}, ErrCorrupt},
		{"trailer records count wrong", nc().add(byte(tagData), 3, sum, blk).end(2, 1, 0, 512), Limits{}, ErrCorrupt},
		{"trailer data count wrong", nc().add(byte(tagData), 3, sum, blk).end(1, 0, 0, 512), Limits{}, ErrCorrupt},
		{"trailer zero count wrong", nc().add(byte(tagZero), 3, 2).end(1, 0, 3, 0), Limits{}, ErrCorrupt},
		{"trailer bytes wrong", nc().add(byte(tagData), 3, sum, blk).end(1, 1, 0, 511), Limits{}, ErrCorrupt},
		{"trailer cut", nc().end(0, 0, 0, 0)[:len(nc().b)+1+39], Limits{}, ErrTruncated},
	}
	for _, c := range cases {
		_, _, err := decodeAll(bytes.NewReader(c.stream), c.lim)
		switch {
		case c.want == nil && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		case err != nil:
			t.Logf("%s: %v", c.name, err)
		}
	}
}

func TestReadErrorPassesThrough(t *testing.T) {
	stream, _ := encode(t, testHeader(4096, 8*4096), []op{{block: 0, data: make([]byte, 8*4096)}})
	boom := errors.New("connection reset")
	for _, n := range []int{0, 10, 80, 200, len(stream) - 1} {
		in := io.MultiReader(bytes.NewReader(stream[:n]), iotest.ErrReader(boom))
		_, _, err := decodeAll(in, Limits{})
		if !errors.Is(err, boom) || errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt) {
			t.Errorf("read error after %d bytes: got %v, want the input's error only", n, err)
		}
	}
}

func TestReaderStopsAtTrailer(t *testing.T) {
	stream, _ := encode(t, testHeader(4096, 8*4096), []op{{block: 1, data: random(rand.New(rand.NewPCG(1, 1)), 4096)}})
	next := []byte("next stream")
	in := bytes.NewReader(append(bytes.Clone(stream), next...))
	if _, _, err := decodeAll(in, Limits{}); err != nil {
		t.Fatal(err)
	}
	if in.Len() != len(next) {
		t.Errorf("%d bytes left after the trailer, want %d", in.Len(), len(next))
	}
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(stream), bytes.NewReader(next)))
	if _, _, err := decodeAll(br, Limits{}); err != nil {
		t.Fatal(err)
	}
	if rest, _ := io.ReadAll(br); !bytes.Equal(rest, next) {
		t.Errorf("left %q after the trailer, want %q", rest, next)
	}
}

func TestReaderSticky(t *testing.T) {
	stream, _ := encode(t, testHeader(4096, 4096), []op{{block: 0, data: make([]byte, 4096)}})
	fr, err := NewReader(bytes.NewReader(stream), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if rec, err := fr.Next(); err != io.EOF || rec.Kind != 0 {
			t.Fatalf("after the last record: %v, %v; want io.EOF", rec, err)
		}
	}

	bad := bytes.Clone(stream)
	bad[len(bad)-1] ^= 1
	fr, err = NewReader(bytes.NewReader(bad), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	fr.Next()
	_, err1 := fr.Next()
	_, err2 := fr.Next()
	if !errors.Is(err1, ErrCorrupt) || err2 != err1 {
		t.Fatalf("got %v then %v; want the same ErrCorrupt", err1, err2)
	}
}

func TestLimitsDefaults(t *testing.T) {
	for _, c := range []struct{ in, want Limits }{
		{Limits{}, Limits{MaxBlockSize, MaxNameLen}},
		{Limits{-1, -1}, Limits{MaxBlockSize, MaxNameLen}},
		{Limits{1 << 30, 1 << 20}, Limits{MaxBlockSize, 65535}},
		{Limits{4096, 16}, Limits{4096, 16}},
	} {
		if got := c.in.withDefaults(); got != c.want {
			t.Errorf("%+v: got %+v, want %+v", c.in, got, c.want)
		}
	}
}

// allocated returns the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestBoundedAllocation feeds streams whose fields claim a lot: the Reader
// allocates no more than its limits allow.
func TestBoundedAllocation(t *testing.T) {
	big := testHeader(MaxBlockSize, 1<<50)
	small := testHeader(512, 1<<50)
	const slack = 64 << 10
	cases := []struct {
		name  string
		in    []byte
		lim   Limits
		bound uint64
	}{
		{"huge lz4 length, small blocks", newCraft(small).add(byte(tagData|tagLZ4), 0, uint32(1<<32-1), 0).b, Limits{}, slack},
		{"huge lz4 length, big blocks", newCraft(big).add(byte(tagData|tagLZ4), 0, uint32(1<<32-1), 0).b, Limits{}, slack},
		{"big block size over limit", newCraft(big).add(byte(tagData), 0, 0, make([]byte, 100)).b, Limits{MaxBlockSize: 4096}, slack},
		{"big block, short input", newCraft(big).add(byte(tagData), 0, 0, make([]byte, 100)).b, Limits{}, MaxBlockSize + slack},
		{"big lz4 block, short input", newCraft(big).add(byte(tagData|tagLZ4), 0, uint32(MaxBlockSize-1), 0, make([]byte, 100)).b, Limits{}, 2*MaxBlockSize + slack},
		{"huge zero extent", newCraft(small).add(byte(tagZero), 0, uint64(1<<50/512)).end(1, 0, 1<<50/512, 0), Limits{}, slack},
		{"long names", func() []byte {
			h := small
			h.VM, h.Disk = strings.Repeat("v", 65535), strings.Repeat("d", 65535)
			return newCraft(h).end(0, 0, 0, 0)
		}(), Limits{}, slack},
	}
	for _, c := range cases {
		var err error
		n := allocated(func() { _, _, err = decodeAll(bytes.NewReader(c.in), c.lim) })
		if n > c.bound {
			t.Errorf("%s: allocated %d bytes, bound %d (err %v)", c.name, n, c.bound, err)
		}
	}
}
