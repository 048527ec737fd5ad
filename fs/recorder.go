package fs

import "io"

// Recorder learns of every change made to the files of the source directory
// through the mount. It is how fs reports to the change log without knowing it
// (fs never imports the tracker).
//
// Methods may be called concurrently from many FUSE server goroutines.
type Recorder interface {
	// OpenDisk returns the change log of the regular file at rel (slash
	// separated, relative to the source directory) whose size is now size,
	// or nil when the file is not a tracked disk. fs calls it once per inode,
	// on the first open or create of the file through the mount (or the first
	// truncate(2) by path, which changes the file without opening it), and
	// uses the result until the inode is forgotten. An error fails the open
	// (or truncate), with the errno it wraps, else EIO.
	OpenDisk(rel string, size int64) (DiskRecorder, error)

	// Renamed reports that the file or directory at from is now at to. A
	// Recorder must not lose track of the changes of a renamed disk; it may
	// mark it for resynchronization.
	Renamed(from, to string)

	// Removed reports that the file at rel was unlinked.
	Removed(rel string)
}

// DiskRecorder records the changes of one disk.
//
// fs calls the Written, Zeroed, Changed and Resized methods after it changed
// the backing file and before it replies to the kernel, while it holds an
// exclusive lock on every block (of BlockSize bytes) that the change touched,
// so that reading those blocks back from src shows exactly the state this
// change left. Resized is called with the whole file locked. Calls for
// disjoint block ranges run concurrently.
//
// data and src are valid only during the call: fs reuses the request
// buffer and may close the descriptor behind src afterwards.
//
// None of these methods returns an error: the workload's I/O must not fail
// because the log did. A DiskRecorder that cannot record a change marks the
// disk for resynchronization itself (invariant 2).
type DiskRecorder interface {
	// BlockSize is the tracking granularity, a power of two.
	BlockSize() int

	// Written: data was written at off. Blocks only partly covered by data
	// are read back whole from src.
	Written(off int64, data []byte, src io.ReaderAt)

	// Zeroed: [off, off+n) now reads as zeros (punch hole, zero range).
	// Blocks partly inside the range are read back from src.
	Zeroed(off, n int64, src io.ReaderAt)

	// Changed: [off, off+n) changed and fs has not got the data
	// (copy_file_range destination); the recorder reads it from src.
	Changed(off, n int64, src io.ReaderAt)

	// Resized: the file is now size bytes long (truncate, setattr,
	// fallocate past the end). Writes past the end do not call Resized:
	// Written implies the growth.
	Resized(size int64, src io.ReaderAt)

	// Sync returns once the records of every change reported before the
	// call are durable. fs calls it from fsync/fdatasync after the backing
	// file has been synced, and returns its error to the caller.
	Sync() error

	// Release tells the recorder that fs no longer uses it (the inode was
	// forgotten or the mount is closing).
	Release()
}

// InFlightRecorder is a DiskRecorder that keeps, where the death of the
// process does not erase it, which changes fs has begun and not yet
// reported: after a kill -9 it can record those ranges again instead of
// losing track of the whole disk. fs calls Begin before it changes the
// backing file, with the block lock of the change held, and End with
// Begin's token once the report (Written, Zeroed, Changed, Resized) has
// returned or the change failed. n < 0 means from off to the end of the
// file, for a change of its size. Begin may wait while many changes are in
// flight; it does not fail.
type InFlightRecorder interface {
	DiskRecorder
	Begin(off, n int64) uint32
	End(token uint32)
}

// MetadataRecorder is a DiskRecorder that also hears of the changes of a
// disk's file that move its ctime but no byte of it: mode, owner, times,
// extended attributes, and fallocate's reservations. fs calls Touched after
// such a change made through the mount, when the recorder has the method.
// A recorder that compares the file's ctime with the mount's own changes,
// to notice a change made behind the mount's back, needs it.
type MetadataRecorder interface {
	DiskRecorder
	Touched()
}
