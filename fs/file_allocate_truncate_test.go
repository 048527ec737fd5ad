package fs

import (
	"errors"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openDisk opens rel in the mount read-write, with a file of size random
// bytes written into the source first.
func openDisk(t *testing.T, bs, size int) (*testMount, *os.File, *shadowDisk) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(size), 9))
	tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
		writeSource(t, src, "d", randomBytes(rng, size))
	}})
	f, err := os.OpenFile(tm.path("d"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return tm, f, tm.rec.mustDisk(t, "d")
}

// fallocateOrSkip runs fallocate and skips the test when the kernel or the
// backing file system lacks the mode.
func fallocateOrSkip(t *testing.T, f *os.File, mode uint32, off, n int64) {
	t.Helper()
	err := unix.Fallocate(int(f.Fd()), mode, off, n)
	if errors.Is(err, syscall.EOPNOTSUPP) {
		t.Skipf("fallocate mode %#x: %v", mode, err)
	}
	if err != nil {
		t.Fatalf("fallocate mode %#x [%d,+%d): %v", mode, off, n, err)
	}
}

func TestFallocate(t *testing.T) {
	const bs = 4096
	const size = 16 * bs
	keep := uint32(unix.FALLOC_FL_KEEP_SIZE)
	for _, tc := range []struct {
		name    string
		mode    uint32
		off, n  int64
		want    []event
		size    int64
		zeroed  bool // the range reads as zeros afterwards
		skipMsg string
	}{
		{"PunchHole", unix.FALLOC_FL_PUNCH_HOLE | keep, bs + 100, 2 * bs,
			[]event{{evZeroed, bs + 100, 2 * bs}}, size, true, ""},
		{"PunchHolePastEnd", unix.FALLOC_FL_PUNCH_HOLE | keep, size - 10, 2 * bs,
			[]event{{evZeroed, size - 10, 10}}, size, true, ""},
		{"ZeroRangeKeepSize", unix.FALLOC_FL_ZERO_RANGE | keep, 3*bs - 1, bs + 2,
			[]event{{evZeroed, 3*bs - 1, bs + 2}}, size, true, ""},
		{"ZeroRangeGrows", unix.FALLOC_FL_ZERO_RANGE, size - 100, 2 * bs,
			[]event{{evZeroed, size - 100, 2 * bs}, {evResized, size - 100 + 2*bs, 0}}, size - 100 + 2*bs, true, ""},
		{"AllocatePastEnd", 0, size + 5, 3 * bs,
			[]event{{evResized, size + 5 + 3*bs, 0}}, size + 5 + 3*bs, false, ""},
		{"AllocateInside", 0, bs, 2 * bs, nil, size, false, ""},
		{"AllocateKeepSizePastEnd", keep, size, 4 * bs, nil, size, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tm, f, d := openDisk(t, bs, size)
			fallocateOrSkip(t, f, tc.mode, tc.off, tc.n)
			sameEvents(t, tc.name, d.takeEvents(), tc.want)
			got := readFile(t, tm.path("d"))
			if int64(len(got)) != tc.size {
				t.Errorf("size %d, want %d", len(got), tc.size)
			}
			if tc.zeroed {
				for i := tc.off; i < min(tc.off+tc.n, int64(len(got))); i++ {
					if got[i] != 0 {
						t.Fatalf("byte %d is %#x after zeroing", i, got[i])
					}
				}
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	const bs = 512
	t.Run("Path", func(t *testing.T) {
		// truncate(2) by path, on a file never opened through the mount:
		// the disk is opened with the size before the truncate.
		rng := rand.New(rand.NewPCG(10, 11))
		tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
			writeSource(t, src, "d", randomBytes(rng, 5000))
		}})
		if err := os.Truncate(tm.path("d"), 9000); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(tm.path("d"), 1234); err != nil {
			t.Fatal(err)
		}
		sameEvents(t, "truncate by path", tm.rec.mustDisk(t, "d").takeEvents(),
			[]event{{evResized, 9000, 0}, {evResized, 1234, 0}})
	})
	t.Run("Fd", func(t *testing.T) {
		_, f, d := openDisk(t, bs, 5000)
		if err := f.Truncate(777); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(10000); err != nil {
			t.Fatal(err)
		}
		sameEvents(t, "ftruncate", d.takeEvents(), []event{{evResized, 777, 0}, {evResized, 10000, 0}})
	})
	t.Run("OpenTrunc", func(t *testing.T) {
		tm, f, d := openDisk(t, bs, 5000)
		for _, flags := range []int{os.O_WRONLY | os.O_TRUNC, os.O_RDONLY | os.O_TRUNC} {
			if _, err := f.WriteAt([]byte("refill"), 100); err != nil {
				t.Fatal(err)
			}
			g, err := os.OpenFile(tm.path("d"), flags, 0)
			if err != nil {
				t.Fatal(err)
			}
			g.Close()
			if fi, err := os.Stat(tm.backing("d")); err != nil || fi.Size() != 0 {
				t.Fatalf("after open with %#x: %v, %v; want size 0", flags, fi, err)
			}
		}
		sameEvents(t, "open O_TRUNC", joinWrites(d.takeEvents()), []event{
			{evWritten, 100, 6}, {evResized, 0, 0},
			{evWritten, 100, 6}, {evResized, 0, 0},
		})
	})
	t.Run("CreateTrunc", func(t *testing.T) {
		// os.Create of an existing file: O_CREAT|O_TRUNC.
		rng := rand.New(rand.NewPCG(12, 13))
		tm := newTestMount(t, mountConfig{blockSize: bs, setup: func(src string, _ *testRecorder) {
			writeSource(t, src, "d", randomBytes(rng, 3000))
		}})
		f, err := os.Create(tm.path("d"))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		sameEvents(t, "create O_TRUNC", tm.rec.mustDisk(t, "d").takeEvents(), []event{{evResized, 0, 0}})
	})
}
