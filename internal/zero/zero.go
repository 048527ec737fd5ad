// Package zero tells whether bytes are all zero: the one test that every
// layer of drfs uses to send, store and compare runs of zeros as holes.
package zero

import "bytes"

// page is compared against: bytes.Equal runs vectorised.
var page [64 << 10]byte

// Is reports whether every byte of b is zero.
func Is(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(page))
		if !bytes.Equal(b[:n], page[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
