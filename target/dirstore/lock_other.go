//go:build !unix

package dirstore

import (
	"errors"
	"os"
)

const (
	lockShared = iota
	lockExclusive
	lockRelease
)

var errWouldBlock = errors.New("locked by another process or Store")

// flock does nothing where flock(2) is not available: one process at a
// time must use a directory there.
func flock(*os.File, int, bool) error { return nil }
