//go:build !linux

package tracker

import "errors"

func fallocate(uintptr, int64) error { return errors.ErrUnsupported }
