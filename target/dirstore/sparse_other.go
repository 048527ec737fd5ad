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
