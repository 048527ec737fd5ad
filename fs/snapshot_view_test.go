package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// A View read races with writes that save blocks: a block's bit can be
// set between the read looking at it and looking for the end of its run.
// The read must still return, for every block, either the backing file's
// bytes or the saved ones, never fail or panic (it once sliced with a run
// that ended before it began). Blocks are saved one at a time, as the
// write path does, while unaligned reads go on.
func TestViewReadWhileSaving(t *testing.T) {
	const (
		bs     = 4096
		blocks = 256
		size   = blocks * bs
	)
	dir := t.TempDir()
	liveData, savedData := bytes.Repeat([]byte{'L'}, size), bytes.Repeat([]byte{'S'}, size)
	open := func(name string, data []byte) *os.File {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	live, store := open("live", liveData), open("store", savedData)

	deadline := time.Now().Add(2 * time.Second)
	buf := make([]byte, 3*bs)
	for round := 0; time.Now().Before(deadline); round++ {
		ds := &diskSnap{rel: "disk", size: size, shift: 12, live: live, store: store, saved: newBitmap(blocks)}
		v := &View{ds: ds}
		var done atomic.Bool
		go func() {
			defer done.Store(true)
			for b := int64(0); b < blocks; b++ {
				ds.saved.setRange(b, b+1)
			}
		}()
		for i := 0; !done.Load(); i++ {
			off := int64((round*7919+i*4099)%(size-len(buf))) | 1 // never block-aligned
			n, err := v.ReadAt(buf, off)
			if err != nil || n != len(buf) {
				t.Fatalf("round %d: ReadAt(%d bytes at %d) = %d, %v", round, len(buf), off, n, err)
			}
			for lo := int64(0); lo < int64(n); {
				hi := min(int64(n), (off+lo+bs)&^(bs-1)-off)
				piece := buf[lo:hi]
				if !bytes.Equal(piece, liveData[:len(piece)]) && !bytes.Equal(piece, savedData[:len(piece)]) {
					t.Fatalf("round %d: block at %d mixes the backing file and the saved bytes", round, off+lo)
				}
				lo = hi
			}
		}
	}
}
