// Package pointfs serves the disks of a recovery point as a read-only FUSE
// file system: one file per disk, whose bytes are the point's, read through
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
}

// Server is a mounted point.
type Server struct{ fuse *fuse.Server }

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
	sec := time.Hour // a point never changes: the kernel may keep what it learnt
	srv, err := gofs.Mount(mountpoint, &root{disks: disks, onError: opts.OnError, mtime: opts.Time}, &gofs.Options{
		EntryTimeout: &sec,
		AttrTimeout:  &sec,
		MountOptions: fuse.MountOptions{
			FsName:        name,
			Name:          "drfs",
			AllowOther:    opts.AllowOther,
			DirectMount:   true,
			DisableXAttrs: true,
			Options:       []string{"ro"},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("pointfs: mounting at %s: %w", mountpoint, err)
	}
	return &Server{fuse: srv}, nil
}

// Unmount unmounts the point; it fails while a file on it is open.
func (s *Server) Unmount() error { return s.fuse.Unmount() }

// Wait returns once the mount has stopped.
func (s *Server) Wait() { s.fuse.Wait() }

// root is the point's top directory.
type root struct {
	gofs.Inode
	disks   []Disk
	onError func(string, error)
	mtime   time.Time
}

var _ gofs.NodeOnAdder = (*root)(nil)

// OnAdd builds the tree: a directory per folder of a disk's name, a file
// per disk.
func (r *root) OnAdd(ctx context.Context) {
	for _, d := range r.disks {
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
		file := &diskFile{name: d.Name, r: d.Reader, onError: r.onError, mtime: r.mtime}
		parent.AddChild(parts[len(parts)-1], parent.NewPersistentInode(ctx, file, gofs.StableAttr{Mode: syscall.S_IFREG}), false)
	}
}

// diskFile is one disk of the point.
type diskFile struct {
	gofs.Inode
	name    string
	r       target.DiskReader
	onError func(string, error)
	mtime   time.Time
}

var (
	_ gofs.NodeGetattrer = (*diskFile)(nil)
	_ gofs.NodeOpener    = (*diskFile)(nil)
	_ gofs.NodeReader    = (*diskFile)(nil)
)

func (f *diskFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = 0o444 | syscall.S_IFREG
	out.Size = uint64(f.r.Size())
	out.Blocks = (out.Size + 511) / 512
	if !f.mtime.IsZero() {
		out.SetTimes(nil, &f.mtime, &f.mtime)
	}
	return 0
}

// Open refuses writing: a recovery point is never changed from here.
func (f *diskFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

func (f *diskFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	size := f.r.Size()
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	b := dest[:min(int64(len(dest)), size-off)]
	n, err := f.r.ReadAt(b, off)
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
