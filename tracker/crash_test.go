package tracker

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// crashProcess leaves the log as a SIGKILL of its process would: nothing
// synced, no clean marker, the writes made so far in the page cache (here,
// in the files), the in-flight table as it is.
func (l *Log) crashProcess() {
	l.closed.Store(true)
	if l.stopBeat != nil {
		close(l.stopBeat)
	}
	l.stopActivity(false)
	l.closeFiles()
	l.db.Close()
	l.lock.Close()
}

// TestProcessCrash: after a process crash the log is recovered from the
// in-flight table, without flagging any disk: records written after a
// hole (a record reserved and never written) and after the start of a
// header survive, the changes in flight are recorded again from the file,
// and the generation then equals the file. A disk changed while drfs was
// down is flagged; after a host crash (another boot) every disk is.
func TestProcessCrash(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 21))
	src, state := t.TempDir(), t.TempDir()
	const size = 1 << 20
	for _, rel := range []string{"vm/disk.img", "vm/b.img"} {
		path := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	file, err := os.OpenFile(filepath.Join(src, "vm/disk.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	open := func() *Log {
		t.Helper()
		l, err := Open(Options{Dir: state, Source: src})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	l := open()
	d, err := l.OpenDisk("vm/disk.img", size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.OpenDisk("vm/b.img", size); err != nil {
		t.Fatal(err)
	}
	// change writes random bytes at a random place of the file, the way fs
	// does: Begin, the file, the report, End. report false stops it before
	// the report, as a process killed there.
	change := func(report bool) {
		off := rng.Int64N(size - 64<<10)
		p := make([]byte, 1+rng.IntN(64<<10))
		fillRandom(rng, p)
		token := d.Begin(off, int64(len(p)))
		if _, err := file.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if report {
			d.Written(off, p, file)
			d.End(token)
		}
	}
	for range 100 {
		change(true)
	}
	seg := l.mu.vms["vm"].active.seg
	// A writer killed after reserving its record, before writing it.
	change(false)
	seg.reserve(recHeaderSize + 3*l.bs)
	for range 20 {
		change(true)
	}
	// One killed while writing the first bytes of its header.
	change(false)
	var h [recHeaderSize]byte
	(&recHeader{kind: KindData, disk: d.id, block: 7, count: 1, size: size, maxSize: size}).encode(h[:])
	if _, err := seg.f.WriteAt(h[:21], seg.reserve(recHeaderSize+l.bs)); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		change(true)
	}
	// And one killed while writing its data, which is the last record.
	change(false)
	(&recHeader{kind: KindData, disk: d.id, block: 9, count: 4, size: size, maxSize: size}).encode(h[:])
	if _, err := seg.f.WriteAt(append(h[:], 1, 2, 3), seg.reserve(recHeaderSize+4*l.bs)); err != nil {
		t.Fatal(err)
	}
	l.crashProcess()

	// b.img is changed while drfs is down.
	time.Sleep(20 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(src, "vm/b.img"), bytes.Repeat([]byte{1}, size), 0o644); err != nil {
		t.Fatal(err)
	}
	// A read-only look first: it changes nothing, and tells the same.
	ro, err := Open(Options{Dir: state, Source: src, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec := ro.Recovered(); !rec.ProcessCrash || !rec.Pending || rec.InFlight != 3 {
		t.Errorf("read-only recovery %+v, want a pending one of 3 changes in flight", rec)
	}
	if ds := diskStatus(t, ro, "vm", "disk.img"); ds.Resync {
		t.Errorf("disk.img flagged by a read-only look after a process crash: %s", ds.Reason)
	}
	if ds := diskStatus(t, ro, "vm", "b.img"); !ds.Resync {
		t.Errorf("b.img, changed while drfs was down, not flagged by a read-only look: %+v", ds)
	}
	ro.Close()
	l = open()
	rec := l.Recovered()
	t.Logf("recovery: %+v", rec)
	if !rec.ProcessCrash || rec.InFlight != 3 || rec.Reread <= 0 || rec.Reread > 3*64<<10 {
		t.Errorf("recovery %+v, want a process crash with 3 changes in flight, up to 192 KiB read again", rec)
	}
	if ds := diskStatus(t, l, "vm", "disk.img"); ds.Resync {
		t.Errorf("disk.img flagged after a process crash: %s", ds.Reason)
	}
	if ds := diskStatus(t, l, "vm", "b.img"); !ds.Resync || !strings.Contains(ds.Reason, "while drfs was down") {
		t.Errorf("b.img, changed while drfs was down: %+v", ds)
	}
	want, err := os.ReadFile(filepath.Join(src, "vm/disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	rotateMatches(t, l, "vm", make([]byte, size), want, l.bs)

	// Crashed again, and this time the recovery finds the same records.
	d, err = l.OpenDisk("vm/disk.img", size)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		change(true)
	}
	change(false)
	l.crashProcess()
	l = open()
	if ds := diskStatus(t, l, "vm", "disk.img"); ds.Resync {
		t.Errorf("disk.img flagged after a second process crash: %s", ds.Reason)
	}
	got := append([]byte(nil), want...)
	want, _ = os.ReadFile(filepath.Join(src, "vm/disk.img"))
	rotateMatches(t, l, "vm", got, want, l.bs)

	// A host crash: the table is of another boot, which began after the
	// disk's last change. The activity log names the extents to compare.
	d, err = l.OpenDisk("vm/disk.img", size)
	if err != nil {
		t.Fatal(err)
	}
	change(true)
	l.crashProcess()
	boot, btime := bootID, bootTime
	bootID = func() string { return "another boot" }
	bootTime = func() int64 { return time.Now().UnixNano() }
	defer func() { bootID, bootTime = boot, btime }()
	l = open()
	defer l.Close()
	if rec := l.Recovered(); rec.ProcessCrash || !rec.HostCrash || rec.HotExtents == 0 {
		t.Errorf("recovery after a host crash: %+v", rec)
	}
	if ds := diskStatus(t, l, "vm", "disk.img"); !ds.Resync || !IsHotReason(ds.Reason) {
		t.Errorf("disk.img after a host crash: %+v", ds)
	}
}

// TestProcessCrashGarbage: bytes that no torn write explains (not a
// header's start, in a segment a dead process left) stop the scan, and the
// disks of that generation are flagged: the records after them are not
// trusted, and nothing is read past them as a header.
func TestProcessCrashGarbage(t *testing.T) {
	src, state := t.TempDir(), t.TempDir()
	const size = 1 << 20
	path := filepath.Join(src, "vm/disk.img")
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	l, err := Open(Options{Dir: state, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	d, err := l.OpenDisk("vm/disk.img", size)
	if err != nil {
		t.Fatal(err)
	}
	write := func(off int64, p []byte) {
		token := d.Begin(off, int64(len(p)))
		file.WriteAt(p, off)
		d.Written(off, p, file)
		d.End(token)
	}
	write(0, bytes.Repeat([]byte{1}, 8192))
	seg := l.mu.vms["vm"].active.seg
	// A forged record header inside bytes that do not start with the
	// magic: a scan that searched for headers would take it.
	junk := make([]byte, 4096)
	copy(junk, "not a record")
	(&recHeader{kind: KindData, disk: d.id, block: 100, count: 1, size: size, maxSize: size}).encode(junk[512:])
	seg.f.WriteAt(junk, seg.reserve(int64(len(junk))))
	write(65536, bytes.Repeat([]byte{2}, 4096))
	l.crashProcess()

	l, err = Open(Options{Dir: state, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if ds := diskStatus(t, l, "vm", "disk.img"); !ds.Resync || !strings.Contains(ds.Reason, "segment damaged") {
		t.Errorf("disk.img after garbage in its segment: %+v", ds)
	}
}

// BenchmarkRecoverAfterCrash: an Open after a process crash, its active
// generation 1 GiB of 1 MiB writes, the segment out of the page cache:
// how long the scan past the records takes (it reads their headers, not
// their data).
func BenchmarkRecoverAfterCrash(b *testing.B) {
	if !dropCacheSupported {
		b.Skip("cannot drop a file from the page cache here")
	}
	src, state := b.TempDir(), b.TempDir()
	const size, write = 2 << 30, 1 << 20
	path := filepath.Join(src, "vm/disk.img")
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.Truncate(path, 0); err != nil && !os.IsNotExist(err) {
		b.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	f.Truncate(size)
	l, err := Open(Options{Dir: state, Source: src})
	if err != nil {
		b.Fatal(err)
	}
	d, err := l.OpenDisk("vm/disk.img", size)
	if err != nil {
		b.Fatal(err)
	}
	p := bytes.Repeat([]byte{7}, write)
	for off := int64(0); off < 1<<30; off += write {
		d.Written(off, p, f)
	}
	seg := l.mu.vms["vm"].active.seg.path
	l.crashProcess()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := dropCache(seg); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		l, err := Open(Options{Dir: state, Source: src})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if !l.Recovered().ProcessCrash {
			b.Fatal("not recovered as a process crash")
		}
		l.crashProcess()
		b.StartTimer()
	}
}
