package fs

import (
	"context"
	"io"
	"math"
	"os"
	"testing"
)

func TestStripeMask(t *testing.T) {
	l := newBlockLock(4096)
	for _, tc := range []struct {
		off, n int64
		want   uint64
	}{
		{0, 0, 0},
		{100, 0, 0},
		{0, 1, 1},
		{4095, 1, 1},
		{4095, 2, 0b11},
		{4096, 4096, 0b10},
		{63 * 4096, 4096, 1 << 63},
		{63*4096 + 1, 4096, 1<<63 | 1},          // wraps to stripe 0
		{64 * 4096, 3 * 4096, 0b111},            // block 64 is stripe 0
		{10 * 4096, 63 * 4096, ^uint64(1 << 9)}, // 63 blocks: all but the one before
		{0, 64 * 4096, math.MaxUint64},
		{5, 1 << 40, math.MaxUint64},
		{math.MaxInt64 - 10, 100, 1 << 63}, // clamped at the largest offset
	} {
		if got := l.stripeMask(tc.off, tc.n); got != tc.want {
			t.Errorf("stripeMask(%d, %d) = %#x, want %#x", tc.off, tc.n, got, tc.want)
		}
	}
}

func TestNewBlockLockRejectsBadSize(t *testing.T) {
	for _, bs := range []int{0, -4096, 3000} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("newBlockLock(%d) did not panic", bs)
				}
			}()
			newBlockLock(bs)
		}()
	}
}

// nopDisk is a DiskRecorder that records nothing.
type nopDisk struct{}

func (nopDisk) BlockSize() int                     { return 4096 }
func (nopDisk) Written(int64, []byte, io.ReaderAt) {}
func (nopDisk) Zeroed(int64, int64, io.ReaderAt)   {}
func (nopDisk) Changed(int64, int64, io.ReaderAt)  {}
func (nopDisk) Resized(int64, io.ReaderAt)         {}
func (nopDisk) Sync() error                        { return nil }
func (nopDisk) Release()                           {}

// TestWriteDoesNotAllocate: the tracked write path (block lock, pwrite,
// recorder call with the backing reader) allocates nothing.
func TestWriteDoesNotAllocate(t *testing.T) {
	tmp, err := os.CreateTemp(t.TempDir(), "disk")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Close()
	fd := int(tmp.Fd())
	f := &file{fd: fd, disk: newDisk(nopDisk{}), src: backingReader{fd: fd}}
	data := make([]byte, 6000)
	ctx := context.Background()
	var off int64
	allocs := testing.AllocsPerRun(200, func() {
		if _, errno := f.Write(ctx, data, off); errno != 0 {
			t.Fatal(errno)
		}
		off = (off + 4097) % (1 << 20)
	})
	if allocs != 0 {
		t.Errorf("tracked Write allocates %v times per call", allocs)
	}
}
