package resync_test

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/zeebo/xxh3"

	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

func sampleCursor() resync.Cursor {
	return resync.Cursor{
		VM: "web1", Disk: "disks/root.img", Gen: 42, Size: 10<<30 + 512, Offset: 3 << 30,
		Chunks: []int64{1 << 20, 64 << 10, 4 << 10},
		Ranges: []target.Extent{{Off: 0, Len: 4096}, {Off: 1 << 20, Len: 20 << 20}, {Off: 3<<30 - 4096, Len: 4096}},
		Counts: resync.Counts{
			Levels:       []resync.Level{{Chunk: 1 << 20, Compared: 3072, Differing: 30}, {Chunk: 64 << 10, Compared: 480, Differing: 40}, {Chunk: 4 << 10, Compared: 640, Differing: 5122}},
			SumBytesUp:   1000,
			SumBytesDown: 90000,
			Requests:     9,
			SourceRead:   3 << 30,
		},
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := sampleCursor()
	b := c.Marshal()
	var got resync.Cursor
	must(t, got.Unmarshal(b))
	if !reflect.DeepEqual(got, c) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", got, c)
	}
	for i := range b {
		bad := append([]byte(nil), b...)
		bad[i] ^= 0x10
		if err := got.Unmarshal(bad); !errors.Is(err, resync.ErrBadCursor) {
			t.Fatalf("byte %d flipped: %v, want ErrBadCursor", i, err)
		}
	}
	for n := range len(b) {
		if err := got.Unmarshal(b[:n]); !errors.Is(err, resync.ErrBadCursor) {
			t.Fatalf("first %d of %d bytes: %v, want ErrBadCursor", n, len(b), err)
		}
	}
	var empty resync.Cursor
	empty.Chunks = []int64{4096}
	empty.Counts.Levels = []resync.Level{{Chunk: 4096}}
	must(t, got.Unmarshal(empty.Marshal()))
	if got.Offset != 0 || len(got.Ranges) != 0 {
		t.Fatalf("empty cursor: %+v", got)
	}
}

func FuzzCursor(f *testing.F) {
	c := sampleCursor()
	m := c.Marshal()
	f.Add(m)
	f.Add(m[:len(m)-8])
	f.Add([]byte("DRSC"))
	f.Fuzz(func(t *testing.T, b []byte) {
		// As is, and as a body with a good checksum, so that the fuzzer
		// gets past the checksum to the fields.
		for _, in := range [][]byte{b, binary.LittleEndian.AppendUint64(append([]byte(nil), b...), xxh3.Hash(b))} {
			var c resync.Cursor
			if c.Unmarshal(in) != nil {
				continue
			}
			var again resync.Cursor
			if err := again.Unmarshal(c.Marshal()); err != nil || !reflect.DeepEqual(again, c) {
				t.Fatalf("a decoded cursor does not survive a round trip: %v", err)
			}
		}
	})
}
