package fs

import gofs "github.com/hanwen/go-fuse/v2/fs"

// Every go-fuse file interface that *file implements, checked at compile
// time, so that dropping a method cannot silently hand an operation back to
// go-fuse's defaults.
var (
	_ gofs.FileHandle          = (*file)(nil)
	_ gofs.FilePassthroughFder = (*file)(nil) // returns false: never passthrough
	_ gofs.FileReader          = (*file)(nil)
	_ gofs.FileWriter          = (*file)(nil)
	_ gofs.FileFlusher         = (*file)(nil)
	_ gofs.FileFsyncer         = (*file)(nil)
	_ gofs.FileReleaser        = (*file)(nil)
	_ gofs.FileGetattrer       = (*file)(nil)
	_ gofs.FileStatxer         = (*file)(nil)
	_ gofs.FileSetattrer       = (*file)(nil)
	_ gofs.FileLseeker         = (*file)(nil)
	_ gofs.FileAllocater       = (*file)(nil)
)

// Not implemented on purpose:
//   - FileWritever: a mounted file system gets WRITE data in one slice;
//     when a payload does arrive split, go-fuse joins it and calls Write, so
//     every write still goes through Write.
//   - FileIoctler: an ioctl passed to the backing file could change data
//     without the recorder knowing.
//   - FileGetlker, FileSetlker, FileSetlkwer: locks are left to the kernel
//     (EnableLocks is off), which keeps them for the mount's files.
