package tracker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCheckOutside: at each check, a disk's file changed behind the
// mount's back since the last one is flagged, whether the mount changed it
// in between or not; the mount's own changes, data or metadata, are not.
func TestCheckOutside(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "vm"), 0o755)
	path := filepath.Join(src, "vm", "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Options{Dir: t.TempDir(), Source: src})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d, err := l.OpenDisk("vm/disk.img", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 4096)
	// The mount writes: the file, then the report.
	mount := func(off int64) {
		block[0]++
		if _, err := f.WriteAt(block, off); err != nil {
			t.Fatal(err)
		}
		d.Written(off, block, f)
	}
	// Someone else writes the file. The pause lets the file system's
	// clock, which may be coarse, move past the mount's last change.
	behindBack := func(off int64) {
		time.Sleep(20 * time.Millisecond)
		block[0]++
		if _, err := f.WriteAt(block, off); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want string) {
		t.Helper()
		l.Rotate("vm")
		got := l.CheckOutside("vm", nil)
		switch {
		case want == "" && len(got) != 0:
			t.Fatalf("flagged %+v, want nothing", got)
		case want != "" && (len(got) != 1 || !strings.Contains(got[0].Reason, want) || got[0].Disk != "disk.img"):
			t.Fatalf("flagged %+v, want disk.img with %q", got, want)
		}
		if want != "" {
			if flagged, why := d.Resync(); !flagged || !strings.HasPrefix(why, "changed outside the mount while mounted: ") {
				t.Fatalf("disk flagged %v, %q", flagged, why)
			}
			l.ClearResync("vm", "disk.img")
		}
	}

	check("")
	mount(0)
	check("")
	check("")

	// Behind the back while the mount did nothing since the last cut.
	behindBack(8192)
	check("the mount did not change it since")
	check("")

	// Behind the back after the mount's own writes of the interval.
	mount(0)
	mount(4096)
	behindBack(8192)
	check("after the mount's last change")

	// A size change behind the back.
	time.Sleep(20 * time.Millisecond)
	if err := f.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	check("size 2097152, was 1048576")

	// The mount's metadata changes are its own; someone else's are not.
	time.Sleep(20 * time.Millisecond)
	os.Chmod(path, 0o600)
	d.Touched()
	check("")
	time.Sleep(20 * time.Millisecond)
	os.Chmod(path, 0o644)
	check("(ctime)")

	// A disk a copy at this cut covers is only looked at again.
	behindBack(0)
	l.Rotate("vm")
	if got := l.CheckOutside("vm", func(disk string) bool { return disk == "disk.img" }); len(got) != 0 {
		t.Fatalf("a covered disk was flagged: %+v", got)
	}
	check("")

	// Replaced by another file.
	time.Sleep(20 * time.Millisecond)
	os.WriteFile(path+".new", make([]byte, 1<<20), 0o644)
	os.Rename(path+".new", path)
	check("the file was replaced")
}
