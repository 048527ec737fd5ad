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

// copyRange copies n bytes at from in src to off in dst.
func copyRange(src *os.File, from int64, dst *os.File, off, n int64) error {
	return copyBuffered(src, from, dst, off, n)
}

// startWriteback does nothing here: fsync does all the work.
func startWriteback(f *os.File) {}

// nextData cannot tell holes here: everything is data.
func nextData(f *os.File, off int64) (at int64, ok bool) { return 0, false }
