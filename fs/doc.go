// Package fs is the tracking mount: a FUSE loopback over a source directory
// of disk images whose file handles report every change (write, punch hole,
// zero range, allocate, copy_file_range, truncate, fsync) to a Recorder
// before replying to the kernel.
//
// Kernel FUSE passthrough is never used for a tracked file: with it, writes
// would go straight from the kernel to the backing file and never reach the
// daemon (invariant 1 in DESIGN.md).
//
// Mount starts a mount. The first open of a regular file asks the Recorder
// for the file's DiskRecorder, kept per inode until the kernel forgets it.
// Each change is reported under the inode's block lock: changes of disjoint
// blocks run in parallel (O_DIRECT opens get parallel direct writes), while
// changes of a common block, and size changes, are serialized, so that a
// block read back for the log shows exactly the state its change left.
// Reads take no lock. A mount without a Recorder is the same loopback
// without the reports, as a baseline.
//
// Two tools make cuts on a running mount. Server.Quiesce (and QuiescePaths
// for one VM's disks) holds every change of the tracked disks in the
// daemon, before it touches the backing file, once those in flight have
// been recorded: a rotation and a snapshot taken under it are one
// consistent cut, and a planned failover ships the last generation under
// it. Server.Snapshot keeps copy-on-write before-images of some disks in a
// directory, so that a View reads each disk as it was at the snapshot
// (initial replication copies from it while the VM writes on). Without a
// snapshot, the write path pays an atomic load for it; without a hold, two
// atomic additions on the disk's counter. Neither survives the mount.
package fs
