package target

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxNameLen is the longest VM or disk name, in bytes: what a frame stream
// carries.
const MaxNameLen = 255

// CheckName checks the rules every name of the contract shares: not empty,
// at most MaxNameLen bytes, UTF-8, no NUL. what says which name it is ("VM",
// "disk", "source") for the error, which wraps ErrBadName.
func CheckName(what, s string) error {
	switch {
	case s == "":
		return BadName(what, s, "is empty")
	case len(s) > MaxNameLen:
		return BadName(what, s, fmt.Sprintf("is longer than %d bytes", MaxNameLen))
	case !utf8.ValidString(s):
		return BadName(what, s, "is not UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return BadName(what, s, "contains NUL")
	}
	return nil
}

// CheckVM checks a VM name: a name that is one path element.
func CheckVM(vm string) error {
	if err := CheckName("VM", vm); err != nil {
		return err
	}
	switch {
	case strings.Contains(vm, "/"):
		return BadName("VM", vm, "contains '/'")
	case vm == "." || vm == "..":
		return BadName("VM", vm, "is not a name")
	}
	return nil
}

// CheckDisk checks a disk name: a relative slash-separated path inside the
// VM, without empty, "." or ".." elements.
func CheckDisk(disk string) error {
	if err := CheckName("disk", disk); err != nil {
		return err
	}
	for elem := range strings.SplitSeq(disk, "/") {
		switch elem {
		case "":
			return BadName("disk", disk, "has an empty path element")
		case ".", "..":
			return BadName("disk", disk, "has a '.' or '..' path element")
		}
	}
	return nil
}

// BadName returns an error wrapping ErrBadName that says why the name s of
// a what is refused, quoting at most 64 bytes of it.
func BadName(what, s, why string) error {
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return fmt.Errorf("%w: %s name %q %s", ErrBadName, what, s, why)
}
