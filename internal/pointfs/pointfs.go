// Package pointfs serves the disks of a recovery point as a read-only FUSE
// file system (or one whose writes go to an overlay directory, never to
// the target): one file per disk, whose bytes are the point's, read through
// the store's target.DiskReader as they are asked for. A point can then be
// looked into (a file system loop-mounted read-only, a qcow2 image through
// qemu-nbd --read-only) without materialising a copy of its disks.
package pointfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/drfs-project/drfs/target"
)

// Disk is one disk of the point: its name in the VM (slash-separated
// folders become directories) and its reader.
type Disk struct {
	Name   string
	Reader target.DiskReader
}

// Options are the mount's.
type Options struct {
	// Name is the file system's name in the mount table, e.g.
	// "drfs-point:vm1@42".
	Name string
	// AllowOther lets users other than the mounting one read the disks
	// (a qemu-nbd or a hypervisor running as its own user).
	AllowOther bool
	// Time is the files' modification time (the point's cut).
	Time time.Time
	// OnError, if set, hears of every read that failed (a point that
	// expired while it was read, a target that went away); the read
	// returns EIO.
	OnError func(disk string, err error)
	// Overlay, if set, is a directory that takes the writes to the disks
	// (a sparse file per disk, see overlay): the disks are then writable,
	// and the point on the target is still never written. A directory used
	// again keeps the writes of the last time.
	Overlay string
}

// Server is a mounted point.
type Server struct {
	fuse     *fuse.Server
	overlays []*overlay
}

// Mount mounts disks read-only at mountpoint (an existing, empty
// directory) and serves them until Unmount or an unmount from outside.
// The readers stay the caller's to close, after the server has stopped.
func Mount(mountpoint string, disks []Disk, opts Options) (*Server, error) {
	seen := map[string]bool{}
	for _, d := range disks {
		clean := path.Clean(d.Name)
		if d.Name == "" || clean != d.Name || strings.HasPrefix(clean, "../") || strings.HasPrefix(clean, "/") || clean == ".." {
			return nil, fmt.Errorf("pointfs: disk name %q is not a relative path", d.Name)
		}
		if seen[clean] {
			return nil, fmt.Errorf("pointfs: disk %q given twice", d.Name)
		}
		seen[clean] = true
	}
	name := opts.Name
	if name == "" {
		name = "drfs-point"
	}
	var overlays []*overlay
	closeOverlays := func() {
		for _, o := range overlays {
			o.Close()
		}
	}
	files := make([]*diskFile, len(disks))
	for i, d := range disks {
		files[i] = &diskFile{name: d.Name, r: d.Reader, onError: opts.OnError, mtime: opts.Time}
		if opts.Overlay != "" {
			o, err := openOverlay(filepath.Join(opts.Overlay, filepath.FromSlash(d.Name)), d.Reader)
			if err != nil {
				closeOverlays()
				return nil, fmt.Errorf("pointfs: %w", err)
			}
			overlays = append(overlays, o)
			files[i].overlay = o
		}
	}
	mountOpts := []string{"ro"}
	if opts.Overlay != "" {
		mountOpts = nil
	}
	// A point never changes: the kernel may keep what it learnt. With an
	// overlay, only this mount changes the disks, through the kernel.
	sec := time.Hour
	srv, err := gofs.Mount(mountpoint, &root{disks: disks, files: files}, &gofs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{
			FsName:        name,
			Name:          "drfs",
			AllowOther:    opts.AllowOther,
			DirectMount:   true,
			DisableXAttrs: true,
			Options:       mountOpts,
		},
	})
	if err != nil {
		closeOverlays()
		return nil, fmt.Errorf("pointfs: mounting at %s: %w", mountpoint, err)
	}
	return &Server{fuse: srv, overlays: overlays}, nil
}

// Unmount unmounts the point; it fails while a file on it is open.
func (s *Server) Unmount() error { return s.fuse.Unmount() }

// Wait returns once the mount has stopped, its overlay files synced and
// closed.
func (s *Server) Wait() {
	s.fuse.Wait()
	for _, o := range s.overlays {
		o.Sync()
		o.Close()
	}
	s.overlays = nil
}

// root is the point's top directory.
type root struct {
	gofs.Inode
	disks []Disk
	files []*diskFile // of disks, in order
}

var _ gofs.NodeOnAdder = (*root)(nil)

// OnAdd builds the tree: a directory per folder of a disk's name, a file
// per disk.
func (r *root) OnAdd(ctx context.Context) {
	for i, d := range r.disks {
		parent := &r.Inode
		parts := strings.Split(d.Name, "/")
		for _, dir := range parts[:len(parts)-1] {
			child := parent.GetChild(dir)
			if child == nil {
				child = parent.NewPersistentInode(ctx, &gofs.Inode{}, gofs.StableAttr{Mode: syscall.S_IFDIR})
				parent.AddChild(dir, child, false)
			}
			parent = child
		}
		parent.AddChild(parts[len(parts)-1], parent.NewPersistentInode(ctx, r.files[i], gofs.StableAttr{Mode: syscall.S_IFREG}), false)
	}
}

// diskFile is one disk of the point.
type diskFile struct {
	gofs.Inode
	name    string
	r       target.DiskReader
	onError func(string, error)
	mtime   time.Time
	overlay *overlay // nil: read-only
}

var (
	_ gofs.NodeGetattrer = (*diskFile)(nil)
	_ gofs.NodeOpener    = (*diskFile)(nil)
	_ gofs.NodeReader    = (*diskFile)(nil)
	_ gofs.NodeWriter    = (*diskFile)(nil)
	_ gofs.NodeFsyncer   = (*diskFile)(nil)
)

func (f *diskFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o444 | syscall.S_IFREG
	if f.overlay != nil {
		out.Mode = 0o644 | syscall.S_IFREG
	}
	out.Size = uint64(f.r.Size())
	out.Blocks = (out.Size + 511) / 512
	if !f.mtime.IsZero() {
		out.SetTimes(nil, &f.mtime, &f.mtime)
	}
	return 0
}

// Open refuses writing unless the disk has an overlay: a recovery point is
// never changed from here. Truncating is always refused.
func (f *diskFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 || f.overlay == nil && flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Write writes into the overlay.
func (f *diskFile) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if f.overlay == nil {
		return 0, syscall.EROFS
	}
	n, err := f.overlay.WriteAt(data, off)
	if err != nil {
		if errors.Is(err, syscall.EFBIG) {
			return uint32(n), syscall.EFBIG
		}
		if f.onError != nil {
			f.onError(f.name, err)
		}
		return uint32(n), syscall.EIO
	}
	return uint32(n), 0
}

func (f *diskFile) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	if f.overlay == nil {
		return 0
	}
	return gofs.ToErrno(f.overlay.Sync())
}

func (f *diskFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.r.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	b := dest[:min(int64(len(dest)), size-off)]
	var r io.ReaderAt = f.r
	if f.overlay != nil {
		r = f.overlay
	}
	n, err := r.ReadAt(b, off)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(b)) {
		if errors.Is(err, io.EOF) {
			clear(b[n:]) // a replica file shorter than the disk reads as zeros
		} else {
			if f.onError != nil {
				f.onError(f.name, err)
			}
			return nil, syscall.EIO
		}
	}
	return fuse.ReadResultData(b), 0
}
