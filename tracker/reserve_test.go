package tracker

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// tmpfsDir mounts a tmpfs of size bytes on a new directory, or skips the
// test when it cannot (not root).
func tmpfsDir(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// TestReserveFullStateDir fills a small state directory: the write that
// runs out of space releases the reserve and flags the disk, the state
// directory is reported full, later changes are flagged rather than logged,
// rotation still works, dropping the generation gives the space back and
// recreates the reserve, and the log closes cleanly.
func TestReserveFullStateDir(t *testing.T) {
	state := tmpfsDir(t, "8m")
	src := t.TempDir()
	l, err := Open(Options{Dir: state, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	sp := l.Space()
	if sp.Full || !sp.Held || sp.Reserve != (8<<20)/10&^4095 {
		t.Fatalf("space after Open: %+v", sp)
	}
	if fi, err := os.Stat(state + "/reserve"); err != nil || fi.Size() != sp.Reserve {
		t.Fatalf("reserve file: %v %v", fi, err)
	}
	const size = 64 << 20
	d, err := l.OpenDisk("vm1/disk.img", size)
	if err != nil {
		t.Fatal(err)
	}
	d2, err := l.OpenDisk("vm1/other.img", size)
	if err != nil {
		t.Fatal(err)
	}
	img := &image{b: make([]byte, size)}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1)
	}
	var off int64
	for ; off < size && !l.Space().Full; off += int64(len(chunk)) {
		img.writeAt(chunk, off)
		d.Written(off, chunk, img)
	}
	sp = l.Space()
	if !sp.Full || sp.Held || !strings.Contains(sp.Error, "no space left") {
		t.Fatalf("space after filling it: %+v", sp)
	}
	if _, err := os.Stat(state + "/reserve"); !os.IsNotExist(err) {
		t.Fatalf("the reserve is still there: %v", err)
	}
	if ok, why := d.Resync(); !ok || !strings.HasPrefix(why, reasonWrite) {
		t.Fatalf("disk not flagged for the failed write: %v %q", ok, why)
	}
	// The flagged disk is no longer logged; another disk changed while the
	// state directory is full is flagged, not logged.
	before := d.LogBytes()
	d.Written(0, chunk, img)
	if d.LogBytes() != before {
		t.Errorf("a flagged disk's write was logged: %d → %d bytes", before, d.LogBytes())
	}
	d2.Written(0, chunk, img)
	if ok, why := d2.Resync(); !ok || why != reasonFull || d2.LogBytes() != 0 {
		t.Errorf("a disk changed while full: flagged %v %q, %d bytes logged", ok, why, d2.LogBytes())
	}
	// Rotation has room, and the segment's space comes back at the drop.
	gen, err := l.Rotate("vm1")
	if err != nil {
		t.Fatalf("rotate with the state directory full: %v", err)
	}
	free := freeBytes(t, state)
	if err := l.ReadGeneration("vm1", gen, func(Record) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := l.Drop("vm1", gen); err != nil {
		t.Fatalf("drop: %v", err)
	}
	sp = l.Space()
	if sp.Full || !sp.Held {
		t.Fatalf("space after the drop: %+v", sp)
	}
	// The segment of the generation goes, and the reserve comes back.
	if got := freeBytes(t, state); got < free+1<<20 {
		t.Errorf("free space %d after the drop, %d before: the segment was not released", got, free)
	}
	// Once resynchronized, the disk is logged again.
	l.ClearResync("vm1", "disk.img")
	d.Written(0, chunk, img)
	if d.LogBytes() != int64(len(chunk)) {
		t.Errorf("after its resync the disk logs %d bytes, want %d", d.LogBytes(), len(chunk))
	}
	d.Release()
	d2.Release()
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	l, err = Open(Options{Dir: state, Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !l.Clean() || l.Space().Full {
		t.Errorf("reopened: clean %v, space %+v", l.Clean(), l.Space())
	}
	// A disk still flagged for a failed write stays unlogged after a
	// restart.
	if !diskStatus(t, l, "vm1", "other.img").Resync {
		t.Errorf("other.img lost its flag across the restart")
	}
}

// TestReserveNoRoomAtOpen: a state directory without room for the reserve
// is reported full from Open on.
func TestReserveNoRoomAtOpen(t *testing.T) {
	state := tmpfsDir(t, "4m")
	filler, err := os.Create(state + "/filler")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	for {
		if _, err := filler.Write(buf); err != nil {
			break
		}
	}
	filler.Close()
	// Leave room for the index but not for twice the reserve.
	os.Truncate(state+"/filler", 3<<20+512<<10)
	l, err := Open(Options{Dir: state, Source: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if sp := l.Space(); !sp.Full || sp.Held {
		t.Errorf("space: %+v", sp)
	}
	os.Remove(state + "/filler")
	d, err := l.OpenDisk("vm1/disk.img", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	d.Release()
	if _, err := l.Rotate("vm1"); err != nil {
		t.Fatal(err)
	}
	if sp := l.Space(); sp.Full || !sp.Held {
		t.Errorf("space once there is room: %+v", sp)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}
