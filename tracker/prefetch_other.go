//go:build !linux

package tracker

const prefetchSupported = false

func willNeed(uintptr, int64, int64) {}
