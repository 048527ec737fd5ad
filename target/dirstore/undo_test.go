package dirstore

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the golden files in testdata")

const goldenUndo = "testdata/undo-v1.golden"

// goldenEntries is what the golden undo file holds: generation 7 of a disk
// of 10000 bytes before it, started afresh.
func goldenEntries() (gen uint64, prevSize int64, flags uint16, entries []undoEntry, payloads [][]byte) {
	return 7, 10000, undoReset,
		[]undoEntry{
			{off: 0, len: 100},
			{off: 4096, len: 8192 - 4096 + 1000, zero: true},
			{off: 9192, len: 808},
		},
		[][]byte{bytes.Repeat([]byte("drfs"), 25), nil, bytes.Repeat([]byte{0xa5}, 808)}
}

// writeGolden writes the golden undo file with the current writer.
func writeGolden(t *testing.T, name string) {
	gen, prev, flags, entries, payloads := goldenEntries()
	f, err := os.Create(name)
	must(t, err)
	defer f.Close()
	w, err := newUndoWriter(f, func() error { return nil }, gen, prev, flags)
	must(t, err)
	for i, e := range entries {
		if e.zero {
			// Two adjacent zero entries merge into one.
			must(t, w.zero(e.off, 4096))
			must(t, w.zero(e.off+4096, e.len-4096))
		} else {
			must(t, w.data(e.off, payloads[i]))
		}
	}
	must(t, w.finish())
}

// TestUndoGolden: undo files written by this version (and kept in testdata)
// keep decoding to the same entries.
func TestUndoGolden(t *testing.T) {
	if *rewrite {
		writeGolden(t, goldenUndo)
	}
	fresh := filepath.Join(t.TempDir(), "undo")
	writeGolden(t, fresh)
	for _, name := range []string{goldenUndo, fresh} {
		f, err := os.Open(name)
		must(t, err)
		defer f.Close()
		u, err := loadUndo(f)
		must(t, err)
		gen, prev, flags, entries, payloads := goldenEntries()
		if u.gen != gen || u.prevSize != prev || u.flags != flags || len(u.entries) != len(entries) {
			t.Fatalf("%s: gen %d size %d flags %d, %d entries; want %d %d %d %d",
				name, u.gen, u.prevSize, u.flags, len(u.entries), gen, prev, flags, len(entries))
		}
		for i, e := range u.entries {
			if e.off != entries[i].off || e.len != entries[i].len || e.zero != entries[i].zero {
				t.Fatalf("%s: entry %d = %+v, want %+v", name, i, e, entries[i])
			}
			if e.zero {
				continue
			}
			b, err := u.payload(&u.entries[i], make([]byte, e.len))
			must(t, err)
			if !bytes.Equal(b, payloads[i]) {
				t.Fatalf("%s: entry %d payload %q", name, i, b)
			}
		}
	}
	golden, err := os.ReadFile(goldenUndo)
	must(t, err)
	if b, _ := os.ReadFile(fresh); !bytes.Equal(b, golden) {
		t.Errorf("the writer no longer writes %s byte for byte (go test -rewrite if the format changed on purpose, with a new version)", goldenUndo)
	}
}

// FuzzLoadUndo: whatever the bytes, loadUndo and payload return an error or
// entries that are sorted, disjoint and inside the file and the disk.
func FuzzLoadUndo(f *testing.F) {
	golden, err := os.ReadFile(goldenUndo)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Add(golden[:len(golden)-1])
	f.Add(golden[:undoHeaderLen+undoFooterLen])
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		name := filepath.Join(dir, "undo")
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		u, err := loadUndo(fh)
		if err != nil {
			return
		}
		end := int64(0)
		buf := make([]byte, maxUndoData)
		for i := range u.entries {
			e := &u.entries[i]
			if e.off < end || e.len <= 0 || e.off+e.len > u.prevSize {
				t.Fatalf("entry %d %+v after %d, size %d", i, e, end, u.prevSize)
			}
			end = e.off + e.len
			if !e.zero {
				u.payload(e, buf)
			}
		}
	})
}
