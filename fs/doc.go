// Package fs is the tracking mount: a FUSE loopback over a source directory
// of disk images whose file handles report every change (write, punch hole,
// zero range, allocate, copy_file_range, truncate, fsync) to a Recorder
// before replying to the kernel.
//
// Kernel FUSE passthrough is never used for a tracked file: with it, writes
// would go straight from the kernel to the backing file and never reach the
// daemon (invariant 1 in DESIGN.md).
package fs
