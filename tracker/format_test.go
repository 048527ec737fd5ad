package tracker

import (
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/format.golden from the current encoders")

// goldenValues are fixed values of every encoded type; their encodings are
// kept in testdata/format.golden and must keep decoding to the same values.
func goldenValues() []struct {
	name string
	enc  []byte
	dec  func([]byte) (any, error)
	want any
} {
	seg := segHeader{blockSize: 4096, vm: 7, gen: 42, created: 1700000000123456789}
	segB := make([]byte, segHeaderSize)
	seg.encode(segB)
	rec := recHeader{kind: KindData, disk: 3, block: 1000, count: 2, size: 1 << 30, maxSize: 1<<30 + 4096}
	recB := make([]byte, recHeaderSize)
	rec.encode(recB)
	key := appendIndexKey(nil, 7, 42, 3, 1000)
	ie := indexEntry{kind: KindData, count: 2, arg: 64 + recHeaderSize}
	fr := formatRecord{version: formatVersion, blockSize: 4096, source: "/srv/vms"}
	dr := diskRecord{rel: "web/root.qcow2", flags: diskResync | diskIdentity, size: 10 << 30, mtime: 1700000000000000000,
		inode: 123456, reason: "dirty shutdown", since: 1700000001000000000}
	gr := genRecord{state: genFrozen, created: 1700000002000000000, disks: []genDiskStat{
		{disk: 3, dataBlocks: 2, zeroBlocks: 16, size: 1 << 30},
		{disk: 4, removed: true},
	}}
	type idx struct {
		Disk  uint32
		Block uint64
		E     indexEntry
	}
	return []struct {
		name string
		enc  []byte
		dec  func([]byte) (any, error)
		want any
	}{
		{"segment header", segB, func(b []byte) (any, error) { return decodeSegHeader(b) }, seg},
		{"record header", recB, func(b []byte) (any, error) {
			h, ok := decodeRecHeader(b)
			if !ok {
				return nil, fmt.Errorf("invalid")
			}
			return h, nil
		}, rec},
		{"index key+value", append(append([]byte{}, key...), appendIndexValue(nil, ie)...), func(b []byte) (any, error) {
			d, blk, e, err := decodeIndex(b[:indexKeySize], b[indexKeySize:])
			return idx{d, blk, e}, err
		}, idx{3, 1000, ie}},
		{"format record", fr.encode(), func(b []byte) (any, error) { return decodeFormat(b) }, fr},
		{"vm record", vmRecord{name: "web"}.encode(), func(b []byte) (any, error) { return decodeVM(b) }, vmRecord{name: "web"}},
		{"disk record", dr.encode(), func(b []byte) (any, error) { return decodeDisk(b) }, dr},
		{"generation record", gr.encode(), func(b []byte) (any, error) { return decodeGen(b) }, gr},
	}
}

func TestFormatGolden(t *testing.T) {
	const path = "testdata/format.golden"
	var b strings.Builder
	for _, v := range goldenValues() {
		fmt.Fprintf(&b, "%s: %s\n", v.name, hex.EncodeToString(v.enc))
	}
	if *rewrite {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	golden, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (create it with -rewrite)", err)
	}
	lines := strings.Split(strings.TrimSpace(string(golden)), "\n")
	vals := goldenValues()
	if len(lines) != len(vals) {
		t.Fatalf("%s has %d lines, want %d", path, len(lines), len(vals))
	}
	for i, v := range vals {
		name, hexed, _ := strings.Cut(lines[i], ": ")
		if name != v.name {
			t.Fatalf("line %d is %q, want %q", i+1, name, v.name)
		}
		raw, err := hex.DecodeString(hexed)
		if err != nil {
			t.Fatal(err)
		}
		// Old bytes must keep decoding...
		got, err := v.dec(raw)
		if err != nil || !reflect.DeepEqual(got, v.want) {
			t.Errorf("%s: golden bytes decode to %+v, %v; want %+v", v.name, got, err, v.want)
		}
		// ...and the encoder must not drift without a format version bump.
		if hex.EncodeToString(v.enc) != hexed {
			t.Errorf("%s: encoding changed:\n got %x\nwant %s\n(bump formatVersion and rewrite with -rewrite if intended)", v.name, v.enc, hexed)
		}
	}
}

// FuzzDecode: no decoder panics on any input, and whatever decodes
// re-encodes to a value that decodes the same.
func FuzzDecode(f *testing.F) {
	for _, v := range goldenValues() {
		f.Add(v.enc)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := decodeSegHeader(b); err == nil {
			out := make([]byte, segHeaderSize)
			h.encode(out)
			if h2, err := decodeSegHeader(out); err != nil || h2 != h {
				t.Fatalf("segment header round trip: %+v → %+v, %v", h, h2, err)
			}
		}
		if h, ok := decodeRecHeader(b); ok {
			out := make([]byte, recHeaderSize)
			h.encode(out)
			if h2, ok := decodeRecHeader(out); !ok || h2 != h {
				t.Fatalf("record header round trip: %+v → %+v", h, h2)
			}
		}
		if len(b) >= indexKeySize {
			decodeIndex(b[:indexKeySize], b[indexKeySize:])
		}
		decodeFormat(b)
		if r, err := decodeVM(b); err == nil {
			if r2, err := decodeVM(r.encode()); err != nil || r2 != r {
				t.Fatalf("vm record round trip: %+v → %+v, %v", r, r2, err)
			}
		}
		if r, err := decodeDisk(b); err == nil {
			if r2, err := decodeDisk(r.encode()); err != nil || r2 != r {
				t.Fatalf("disk record round trip: %+v → %+v, %v", r, r2, err)
			}
		}
		if r, err := decodeGen(b); err == nil {
			if r2, err := decodeGen(r.encode()); err != nil || !reflect.DeepEqual(r2, r) {
				t.Fatalf("generation record round trip: %+v → %+v, %v", r, r2, err)
			}
		}
	})
}
