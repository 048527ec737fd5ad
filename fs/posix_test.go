package fs

import (
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

// TestPosix runs go-fuse's POSIX suite on a fresh mount per case, tracked
// and untracked. On the tracked mount, the cleanup then checks that every
// file's shadow, built from the recorder's events alone, equals the backing
// file.
func TestPosix(t *testing.T) {
	requireFUSE(t)
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, mode := range []string{"tracked", "untracked"} {
		t.Run(mode, func(t *testing.T) {
			for _, name := range names {
				t.Run(name, func(t *testing.T) {
					if why, ok := posixSkips[name]; ok {
						t.Skip(why)
					}
					tm := newTestMount(t, mountConfig{noRecorder: mode == "untracked"})
					posixtest.All[name](t, tm.mnt)
				})
			}
		})
	}
}
