package dirstore

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// maxName is the longest VM or disk name: what a frame stream can carry.
const maxName = frame.MaxNameLen

// reservedPrefix starts the names of the store's own files at its top.
const reservedPrefix = ".drfs"

// lockName is the file a Store holds locked while it has the directory open.
const lockName = reservedPrefix + "-lock"

// checkVM validates a VM name: one path element, not starting with
// reservedPrefix (names at the top of the store that are the store's own).
func checkVM(vm string) error {
	if err := checkName("VM", vm); err != nil {
		return err
	}
	switch {
	case strings.Contains(vm, "/"):
		return badName("VM", vm, "contains '/'")
	case vm == "." || vm == "..":
		return badName("VM", vm, "is not a name")
	case strings.HasPrefix(vm, reservedPrefix):
		return badName("VM", vm, "starts with "+reservedPrefix+", which the store reserves")
	}
	return nil
}

// checkDisk validates a disk name: a relative slash-separated path inside the
// VM, without empty, "." or ".." elements.
func checkDisk(disk string) error {
	if err := checkName("disk", disk); err != nil {
		return err
	}
	for elem := range strings.SplitSeq(disk, "/") {
		switch elem {
		case "":
			return badName("disk", disk, "has an empty path element")
		case ".", "..":
			return badName("disk", disk, "has a '.' or '..' path element")
		}
	}
	return nil
}

func checkName(what, s string) error {
	switch {
	case s == "":
		return badName(what, s, "is empty")
	case len(s) > maxName:
		return badName(what, s, fmt.Sprintf("is longer than %d bytes", maxName))
	case !utf8.ValidString(s):
		return badName(what, s, "is not UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return badName(what, s, "contains NUL")
	}
	return nil
}

func badName(what, s, why string) error {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return fmt.Errorf("dirstore: %w: %s name %q %s", target.ErrBadName, what, s, why)
}

// conflict returns a pair of disk names where one is a directory of the
// other ("a" and "a/b"): they cannot both be files.
func conflict(disks []string) (string, string, bool) {
	set := make(map[string]bool, len(disks))
	for _, d := range disks {
		set[d] = true
	}
	for _, d := range disks {
		for i := strings.IndexByte(d, '/'); i >= 0; i = nextSlash(d, i) {
			if set[d[:i]] {
				return d[:i], d, true
			}
		}
	}
	return "", "", false
}

func nextSlash(s string, i int) int {
	j := strings.IndexByte(s[i+1:], '/')
	if j < 0 {
		return -1
	}
	return i + 1 + j
}
