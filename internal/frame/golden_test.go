package frame

import (
	"bytes"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden streams of the current format version in testdata/")

// Golden streams: testdata/v<major>-<name>.drfs, each with a .txt that says
// what it decodes to. Streams of older versions stay forever, so a reader that
// stops decoding them fails TestGolden. Streams of the current version are
// also re-encoded and compared byte for byte, so a change to what the Writer
// emits is noticed; -update rewrites them.

// splitmix is a fixed pseudo-random source, so fixtures do not depend on the
// generators of math/rand.
type splitmix uint64

func (s *splitmix) Uint64() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

type fixture struct {
	name string
	h    Header
	ops  func(rng *rand.Rand) []op
}

func fixtures() []fixture {
	created := time.Date(2025, 6, 1, 12, 30, 0, 123456789, time.UTC)
	return []fixture{{
		// Every record shape: a compressed run, a raw continuation, merged
		// zero extents, explicit data after a zero extent and after a gap,
		// and a final partial block.
		name: "generation",
		h: Header{Kind: StreamGeneration, VM: "vm-web-01", Disk: "disk0.qcow2", Generation: 42, Base: 41,
			BlockSize: 4096, DiskSize: 12*4096 + 1000, Created: created},
		ops: func(rng *rand.Rand) []op {
			return []op{
				{block: 0, data: compressible(rng, 3*4096)},
				{block: 3, data: random(rng, 4096)},
				{block: 4, count: 2},
				{block: 6, count: 1},
				{block: 7, data: make([]byte, 4096)},
				{block: 9, data: random(rng, 4096)},
				{block: 10, count: 2},
				{block: 12, data: compressible(rng, 1000)},
			}
		},
	}, {
		name: "resync",
		h: Header{Kind: StreamResync, VM: "db", Disk: "data/pg.raw", Generation: 9,
			BlockSize: 512, DiskSize: 64 * 512, Created: created},
		ops: func(rng *rand.Rand) []op {
			return []op{
				{block: 1, data: random(rng, 512)},
				{block: 2, data: compressible(rng, 512)},
				{block: 3, count: 5},
				{block: 20, data: compressible(rng, 2*512)},
				{block: 63, data: random(rng, 512)},
			}
		},
	}, {
		name: "empty",
		h: Header{Kind: StreamGeneration, VM: "vm-idle", Disk: "root.img", Generation: 1,
			BlockSize: 64 << 10, DiskSize: 1 << 30},
		ops: func(*rand.Rand) []op { return nil },
	}, {
		name: "bigblock",
		h: Header{Kind: StreamGeneration, VM: "vm-big", Disk: "big.raw", Generation: 1 << 40, Base: 1<<40 - 1,
			BlockSize: MaxBlockSize, DiskSize: 2*MaxBlockSize + MaxBlockSize/2, Created: created},
		ops: func(rng *rand.Rand) []op {
			b := make([]byte, MaxBlockSize+MaxBlockSize/2)
			for i := 0; i < len(b); i += 64 << 10 {
				copy(b[i:], compressible(rng, 300))
			}
			return []op{{block: 0, count: 1}, {block: 1, data: b}}
		},
	}}
}

func (f fixture) path() string {
	return filepath.Join("testdata", fmt.Sprintf("v%d-%s.drfs", Version, f.name))
}

// describeStream decodes stream into the text its .txt file holds.
func describeStream(stream []byte) (string, error) {
	var b strings.Builder
	fr, err := NewReader(bytes.NewReader(stream), Limits{})
	if err != nil {
		return "", err
	}
	h := fr.Header()
	created := "unset"
	if !h.Created.IsZero() {
		created = h.Created.Format(time.RFC3339Nano)
	}
	fmt.Fprintf(&b, "header kind=%v vm=%q disk=%q generation=%d base=%d block_size=%d disk_size=%d created=%s\n",
		h.Kind, h.VM, h.Disk, h.Generation, h.Base, h.BlockSize, h.DiskSize, created)
	for {
		rec, err := fr.Next()
		if err != nil {
			if err != io.EOF {
				return b.String(), err
			}
			break
		}
		switch rec.Kind {
		case KindData:
			fmt.Fprintf(&b, "data block=%d len=%d sha256=%x\n", rec.Block, len(rec.Data), sha256.Sum256(rec.Data))
		case KindZero:
			fmt.Fprintf(&b, "zero block=%d count=%d\n", rec.Block, rec.Count)
		}
	}
	st := fr.Stats()
	fmt.Fprintf(&b, "trailer records=%d data_blocks=%d zero_blocks=%d data_bytes=%d compressed=%d wire_bytes=%d\n",
		st.Records, st.DataBlocks, st.ZeroBlocks, st.DataBytes, st.Compressed, st.WireBytes)
	return b.String(), nil
}

func (f fixture) encode(t testing.TB) []byte {
	src := splitmix(len(f.name))
	stream, _ := encode(t, f.h, f.ops(rand.New(&src)))
	return stream
}

func TestGolden(t *testing.T) {
	if *update {
		for _, f := range fixtures() {
			stream := f.encode(t)
			text, err := describeStream(stream)
			if err != nil {
				t.Fatalf("%s: %v", f.name, err)
			}
			if err := os.WriteFile(f.path(), stream, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(strings.TrimSuffix(f.path(), ".drfs")+".txt", []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}

	paths, err := filepath.Glob(filepath.Join("testdata", "v*.drfs"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden streams in testdata (%v); create them with -update", err)
	}
	for _, p := range paths {
		t.Run(filepath.Base(p), func(t *testing.T) {
			stream, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(p, ".drfs") + ".txt")
			if err != nil {
				t.Fatal(err)
			}
			got, err := describeStream(stream)
			if err != nil {
				t.Fatalf("golden stream no longer decodes: %v", err)
			}
			if got != string(want) {
				t.Fatalf("golden stream decodes differently:\n--- got\n%s--- want\n%s", got, want)
			}
		})
	}

	for _, f := range fixtures() {
		t.Run("encode "+f.name, func(t *testing.T) {
			want, err := os.ReadFile(f.path())
			if err != nil {
				t.Fatalf("%v; create it with -update", err)
			}
			if got := f.encode(t); !bytes.Equal(got, want) {
				t.Fatalf("the Writer no longer produces %s (%d bytes, now %d): if the change is meant "+
					"and current readers still decode the old stream, keep it under another name and run -update",
					f.path(), len(want), len(got))
			}
		})
	}
}

// goldenStreams returns the committed golden streams by file name.
func goldenStreams(t testing.TB) map[string][]byte {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join("testdata", "v*.drfs"))
	m := map[string][]byte{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m[filepath.Base(p)] = b
	}
	if len(m) == 0 {
		t.Fatal("no golden streams in testdata; create them with go test -run Golden -update")
	}
	return m
}
