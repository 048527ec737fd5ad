package fs

import (
	"bytes"
	"os"
	"sort"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
)

// posixSkips are the posixtest cases that cannot pass on this mount, with
// the reason.
var posixSkips = map[string]string{
	"XAttr":      "extended attributes are disabled on the mount (DisableXAttrs: the kernel would ask for security.capability before every write)",
	"XAttrLarge": "extended attributes are disabled on the mount (DisableXAttrs)",
	"FcntlFlockLocksFile": "wants two descriptors of one process to conflict (OFD-style locks in the daemon); " +
		"drfs leaves locks to the kernel (EnableLocks off), which gives the POSIX answer: no conflict within a process. " +
		"go-fuse's own posixtest run skips it too",
}

// TestPosix runs go-fuse's POSIX suite on a fresh mount per case: tracked,
// untracked, and tracked with a snapshot of a busy disk active (the cases
// then run in a subdirectory). On the tracked mounts, the cleanup then
// checks that every file's shadow, built from the recorder's events alone,
// equals the backing file.
func TestPosix(t *testing.T) {
	requireFUSE(t)
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, mode := range []string{"tracked", "untracked", "snapshot"} {
		t.Run(mode, func(t *testing.T) {
			for _, name := range names {
				t.Run(name, func(t *testing.T) {
					if why, ok := posixSkips[name]; ok {
						t.Skip(why)
					}
					tm := newTestMount(t, mountConfig{noRecorder: mode == "untracked"})
					dir := tm.mnt
					if mode == "snapshot" {
						// The cases want an empty directory.
						withSnapshot(t, tm)
						dir = tm.path("posix")
						if err := os.Mkdir(dir, 0o755); err != nil {
							t.Fatal(err)
						}
					}
					posixtest.All[name](t, dir)
				})
			}
		})
	}
}

// withSnapshot puts a disk in the mount's source, takes a snapshot of it, and checks at cleanup that its view still shows the
// disk as it was.
func withSnapshot(t *testing.T, tm *testMount) {
	const rel = "disk"
	want := bytes.Repeat([]byte("before"), 3000)
	writeSource(t, tm.src, rel, want)
	snap, err := tm.srv.Snapshot([]string{rel}, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v, _ := snap.View(rel)
		got := make([]byte, len(want))
		if _, err := v.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Errorf("snapshot view changed (%v)", err)
		}
		if err := snap.Delete(); err != nil {
			t.Error(err)
		}
	})
	// Change the disk through the mount, so that the snapshot is busy.
	if err := os.WriteFile(tm.path(rel), []byte("after"), 0o644); err != nil {
		t.Fatal(err)
	}
}
