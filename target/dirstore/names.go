package dirstore

import (
	"fmt"
	"strings"

	"github.com/drfs-project/drfs/target"
)

// reservedPrefix starts the names of the store's own files at its top.
const reservedPrefix = ".drfs"

// lockName is the file a Store holds locked while it has the directory open.
const lockName = reservedPrefix + "-lock"

// checkVM validates a VM name: one path element, not starting with
// reservedPrefix (names at the top of the store that are the store's own).
func checkVM(vm string) error {
	if err := wrapName(target.CheckVM(vm)); err != nil {
		return err
	}
	if strings.HasPrefix(vm, reservedPrefix) {
		return badName("VM", vm, "starts with "+reservedPrefix+", which the store reserves")
	}
	return nil
}

// checkDisk validates a disk name (target.CheckDisk).
func checkDisk(disk string) error { return wrapName(target.CheckDisk(disk)) }

// checkName validates a name of the contract (target.CheckName).
func checkName(what, s string) error { return wrapName(target.CheckName(what, s)) }

func badName(what, s, why string) error { return wrapName(target.BadName(what, s, why)) }

func wrapName(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("dirstore: %w", err)
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
