package pointfs

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drfs-project/drfs/target"
)

// memDisk is a point's disk in memory.
type memDisk struct{ b []byte }

func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}
func (m memDisk) Size() int64                       { return int64(len(m.b)) }
func (m memDisk) Close() error                      { return nil }
func (m memDisk) Extents() ([]target.Extent, error) { return nil, nil }

// TestOverlay writes at random places (units and unaligned ranges) of a
// disk through an overlay and reads back the written disk; the point is
// never changed, and an overlay opened again finds the writes.
func TestOverlay(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	const size = 1<<20 + 777 // not a whole number of units
	point := make([]byte, size)
	for i := range point {
		point[i] = byte(rng.Uint32())
	}
	orig := bytes.Clone(point)
	want := bytes.Clone(point)
	path := filepath.Join(t.TempDir(), "dir", "disk.img")
	o, err := openOverlay(path, memDisk{point})
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		n := 1 + rng.IntN(20000)
		off := rng.Int64N(size - int64(n))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if _, err := o.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], b)
	}
	check := func(o *overlay) {
		t.Helper()
		got := make([]byte, size)
		for off := 0; off < size; off += 4096 + 3 {
			n, err := o.ReadAt(got[off:min(off+4096+3, size)], int64(off))
			if err != nil && err != io.EOF || n != min(4096+3, size-off) {
				t.Fatalf("ReadAt %d: %d, %v", off, n, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatal("the overlaid disk does not read as written")
		}
	}
	check(o)
	if _, err := o.WriteAt([]byte("x"), size); err == nil {
		t.Error("a write past the disk's end was taken")
	}
	o.Close()
	if !bytes.Equal(point, orig) {
		t.Fatal("the point was changed")
	}
	o, err = openOverlay(path, memDisk{point})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	check(o)
	if _, err := openOverlay(path, memDisk{point[:4096]}); err == nil || !strings.Contains(err.Error(), "another disk") {
		t.Errorf("an overlay of another size: %v", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("overlay mode %v", fi.Mode())
	}
}
