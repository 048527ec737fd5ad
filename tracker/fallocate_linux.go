package tracker

import "golang.org/x/sys/unix"

// fallocate allocates the first size bytes of the file (and sets its size).
func fallocate(fd uintptr, size int64) error { return unix.Fallocate(int(fd), 0, 0, size) }
