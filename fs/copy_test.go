package fs

import (
	"bytes"
	"math/rand/v2"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyFileRange: copy_file_range between two files of the mount is
// reported as Changed on the destination (also when it grows it), never on
// the source.
func TestCopyFileRange(t *testing.T) {
	const bs = 4096
	rng := rand.New(rand.NewPCG(20, 21))
	a, b := randomBytes(rng, 64<<10), randomBytes(rng, 32<<10)
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "a", a)
		writeSource(t, src, "b", b)
	}})
	fa, err := os.Open(tm.path("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.OpenFile(tm.path("b"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()

	var want []event
	for _, c := range []struct{ offIn, offOut, n int64 }{
		{100, 5000, 10000},       // unaligned, inside b
		{0, 8192, 4096},          // aligned
		{40000, 30000, 9000},     // grows b past its end
		{64<<10 - 10, 1000, 100}, // short: only 10 bytes left in a
	} {
		offIn, offOut := c.offIn, c.offOut
		n, err := unix.CopyFileRange(int(fa.Fd()), &offIn, int(fb.Fd()), &offOut, int(c.n), 0)
		if err != nil {
			t.Fatalf("copy_file_range %+v: %v", c, err)
		}
		want = append(want, event{evChanged, c.offOut, int64(n)})
		if end := int(c.offOut) + n; end > len(b) {
			b = append(b, make([]byte, end-len(b))...)
		}
		copy(b[c.offOut:], a[c.offIn:c.offIn+int64(n)])
	}
	sameEvents(t, "copy_file_range", tm.rec.mustDisk(t, "b").takeEvents(), want)
	if ev := tm.rec.mustDisk(t, "a").takeEvents(); len(ev) != 0 {
		t.Errorf("source got events %v", ev)
	}
	if got := readFile(t, tm.path("b")); !bytes.Equal(got, b) {
		t.Errorf("destination: %s", firstDiff(got, b))
	}
}
