package tracker

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomized tests (0: pick one and print it)")

// testSeed returns the seed to use and logs how to replay it.
func testSeed(t testing.TB) uint64 {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with: go test ./tracker -run '%s$' -seed %d)", seed, t.Name(), seed)
	return seed
}

// image is a disk's backing file in memory: the src of the recorder calls.
type image struct {
	mu sync.RWMutex // only for size changes in tests that race
	b  []byte
}

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// writeAt writes p at off, growing the image as a file grows.
func (m *image) writeAt(p []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := off + int64(len(p)); end > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, end-int64(len(m.b)))...)
	}
	copy(m.b[off:], p)
}

func (m *image) truncate(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if size <= int64(len(m.b)) {
		m.b = m.b[:size]
		return
	}
	m.b = append(m.b, make([]byte, size-int64(len(m.b)))...)
}

// punch zeroes [off, off+n) inside the file without changing its size.
func (m *image) punch(off, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	end := min(off+n, int64(len(m.b)))
	if off < end {
		clear(m.b[off:end])
	}
}

func (m *image) bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return bytes.Clone(m.b)
}

// replica is what a target holds: disk name → content, per VM.
type replica map[string][]byte

// replay applies a frozen generation onto r the way a target does: data,
// zeros, then the size of each disk.
func replay(t testing.TB, l *Log, vm string, gen uint64, r replica) {
	t.Helper()
	bs := l.bs
	grow := func(name string, n int64) {
		if int64(len(r[name])) < n {
			r[name] = append(r[name], make([]byte, n-int64(len(r[name])))...)
		}
	}
	lastDisk, lastKind := "", Kind(0)
	err := l.ReadGeneration(vm, gen, func(rec Record) error {
		if rec.Disk != lastDisk {
			lastDisk, lastKind = rec.Disk, 0
		}
		if lastKind == KindSize || lastKind == KindRemoved {
			return fmt.Errorf("record %v of %s after its size", rec.Kind, rec.Disk)
		}
		lastKind = rec.Kind
		switch rec.Kind {
		case KindData:
			if int64(len(rec.Data)) != int64(rec.Blocks)*bs {
				return fmt.Errorf("data record of %d blocks has %d bytes", rec.Blocks, len(rec.Data))
			}
			grow(rec.Disk, int64(rec.Block+rec.Blocks)*bs)
			copy(r[rec.Disk][int64(rec.Block)*bs:], rec.Data)
		case KindZero:
			grow(rec.Disk, int64(rec.Block+rec.Blocks)*bs)
			clear(r[rec.Disk][int64(rec.Block)*bs : int64(rec.Block+rec.Blocks)*bs])
		case KindSize:
			grow(rec.Disk, rec.Size)
			r[rec.Disk] = r[rec.Disk][:rec.Size]
		case KindRemoved:
			delete(r, rec.Disk)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("replaying generation %d of %s: %v", gen, vm, err)
	}
}

// firstDiff describes where two images differ, or "".
// rotateMatches freezes vm's active generation, replays it onto initial
// (the disk "disk.img" before it) and fails the test unless that gives want.
func rotateMatches(t testing.TB, l *Log, vm string, initial, want []byte, bs int64) {
	t.Helper()
	g, err := l.Rotate(vm)
	if err != nil {
		t.Fatal(err)
	}
	rep := replica{"disk.img": initial}
	replay(t, l, vm, g, rep)
	if diff := firstDiff(rep["disk.img"], want, bs); diff != "" {
		t.Fatal(diff)
	}
}

func firstDiff(got, want []byte, bs int64) string {
	if bytes.Equal(got, want) {
		return ""
	}
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("first difference at byte %d (block %d): got %#x, want %#x; sizes %d and %d",
				i, int64(i)/bs, got[i], want[i], len(got), len(want))
		}
	}
	return fmt.Sprintf("sizes differ: got %d, want %d", len(got), len(want))
}

func openMem(t testing.TB, fs vfs.FS, bs int) *Log {
	t.Helper()
	l, err := Open(Options{Dir: "/state", Source: "/src", FS: fs, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func openMemNoActivity(t testing.TB, fs vfs.FS, bs int) *Log {
	t.Helper()
	l, err := Open(Options{Dir: "/state", Source: "/src", FS: fs, BlockSize: bs, NoActivity: true})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func statusOf(t testing.TB, l *Log, vm string) VMStatus {
	t.Helper()
	for _, s := range l.Status() {
		if s.Name == vm {
			return s
		}
	}
	t.Fatalf("no VM %s in status", vm)
	return VMStatus{}
}

func diskStatus(t testing.TB, l *Log, vm, disk string) DiskStatus {
	t.Helper()
	for _, d := range statusOf(t, l, vm).Disks {
		if d.Name == disk {
			return d
		}
	}
	t.Fatalf("no disk %s in VM %s", disk, vm)
	return DiskStatus{}
}

// dumpStatus renders a status for failure messages.
func dumpStatus(l *Log) string {
	var b strings.Builder
	for _, v := range l.Status() {
		fmt.Fprintf(&b, "vm %s active %d\n", v.Name, v.Active)
		for _, g := range v.Generations {
			fmt.Fprintf(&b, "  gen %d frozen %v\n", g.Gen, g.Frozen)
			for _, d := range g.Disks {
				fmt.Fprintf(&b, "    %s data %d zero %d size %d removed %v\n", d.Disk, d.DataBlocks, d.ZeroBlocks, d.Size, d.Removed)
			}
		}
		for _, d := range v.Disks {
			fmt.Fprintf(&b, "  disk %s size %d log %d resync %v %q\n", d.Name, d.Size, d.LogBytes, d.Resync, d.Reason)
		}
	}
	return b.String()
}
