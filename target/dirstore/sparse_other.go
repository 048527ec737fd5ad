//go:build !linux

package dirstore

import "os"

// punchHole writes zeros: this platform's hole punching is not wired up.
func punchHole(f *os.File, off, n int64) error { return writeZeros(f, off, n) }

// dataExtents reports the whole range as data.
func dataExtents(f *os.File, off, end int64) ([]extent, error) {
	if off >= end {
		return nil, nil
	}
	return []extent{{off, end - off}}, nil
}

// copyRange copies [off, off+n) of src to the same offsets of dst.
func copyRange(src, dst *os.File, off, n int64) error { return copyBuffered(src, dst, off, n) }
