package azblob

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/drfs-project/drfs/target"
)

// maxName is the longest VM or disk name: what a frame stream can carry.
const maxName = target.MaxNameLen

// maxBlobName is the longest blob name the service takes.
const maxBlobName = 1024

// checkVM validates a VM name: one path element.
func checkVM(vm string) error {
	return wrapName(target.CheckVM(vm))
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
	return fmt.Errorf("azblob: %w", err)
}

// checkBlobName refuses a VM and disk whose longest blob name (a staged
// stream's) would be too long for the service once escaped.
func (s *Store) checkBlobName(vm, disk string) error {
	if n := len(s.stagedBlob(vm, ^uint64(0), disk)); n > maxBlobName {
		return badName("disk", disk, fmt.Sprintf("of VM %q makes a blob name of %d bytes once escaped, more than the %d the service takes", vm, n, maxBlobName))
	}
	return nil
}

// escape maps one path element to a blob name element. Bytes other than
// ASCII letters, digits, '-', '_' and '.' become %XX, and so does a final
// '.' (the service drops trailing dots of path segments); unescape
// reverses it. Names stay readable in a portal or a listing, and no
// character the service or a URL treats specially reaches it.
func escape(elem string) string {
	var b strings.Builder
	for i := 0; i < len(elem); i++ {
		c := elem[i]
		if safeByte(c) && (c != '.' || i < len(elem)-1) {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func safeByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.'
}

// escapePath escapes each element of a slash-separated disk name.
func escapePath(disk string) string {
	elems := strings.Split(disk, "/")
	for i, e := range elems {
		elems[i] = escape(e)
	}
	return strings.Join(elems, "/")
}

// unescape reverses escape (and escapePath); ok is false for a string
// escape does not produce.
func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if !safeByte(c) && c != '/' {
				return "", false
			}
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] {
			return "", false
		}
		b.WriteByte(byte(v))
		i += 2
	}
	out := b.String()
	// Only the canonical form: escapePath(out) must give s back.
	if escapePath(out) != s {
		return "", false
	}
	return out, true
}
