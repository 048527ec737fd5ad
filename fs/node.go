package fs

import (
	"context"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"
)

// node is an inode of the mount: go-fuse's loopback node, plus the disk
// (DiskRecorder and block lock) of a tracked regular file, which every file
// handle of the inode shares. go-fuse makes one node per inode: hard links
// share it.
//
// The loopback's own operations serve directories, symlinks and
// attributes; node overrides those that open files (so that every handle
// is a tracked *file, never a LoopbackFile with kernel passthrough), change
// file contents or size without a handle (setattr), or move and remove
// names (reported to the Recorder).
type node struct {
	gofs.LoopbackNode
	m *mount

	mu struct {
		// Mutex is held across Recorder.OpenDisk, so that a disk is
		// opened once per inode even when two opens race.
		sync.Mutex
		// asked: OpenDisk has been called for the inode and returned
		// disk (nil: the file is not tracked).
		asked bool
		disk  *disk
		// key identifies the backing file once asked.
		key fileKey
	}
}

// newNode is the LoopbackRoot.NewNode hook: every inode the loopback makes
// (lookup, create, mkdir, mknod, symlink, link) is a node.
func (m *mount) newNode(root *gofs.LoopbackRoot, parent *gofs.Inode, name string, st *syscall.Stat_t) gofs.InodeEmbedder {
	return &node{LoopbackNode: gofs.LoopbackNode{RootData: root}, m: m}
}

// rel returns the path of the node relative to the source, slash
// separated, "" for the root. A node that is in no directory any more (its
// name was unlinked or replaced) has no path: ENOENT. Without this check an
// orphan's path would come out as "", the source directory itself.
func (n *node) rel() (string, syscall.Errno) {
	return relOf(n)
}

// relOf is rel for any inode of the mount.
func relOf(e gofs.InodeEmbedder) (string, syscall.Errno) {
	in := e.EmbeddedInode()
	root := in.Root()
	var names []string
	for in != root {
		name, parent := in.Parent()
		if parent == nil {
			return "", syscall.ENOENT
		}
		names = append(names, name)
		in = parent
	}
	slices.Reverse(names)
	return strings.Join(names, "/"), 0
}

// isRegular reports whether the node is a regular file.
func (n *node) isRegular() bool {
	return n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFREG
}

// diskFor returns the disk of the inode, asking the Recorder on first use
// with rel and the current size of the file. It returns nil for an
// untracked file or mount.
func (n *node) diskFor(rel string, st *syscall.Stat_t) (*disk, syscall.Errno) {
	if n.m.rec == nil {
		return nil, 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.asked {
		return n.mu.disk, 0
	}
	dr, err := n.m.rec.OpenDisk(rel, st.Size)
	if err != nil {
		n.m.logger.Printf("drfs: open disk %s: %v", rel, err)
		return nil, errnoOf(err)
	}
	n.mu.asked = true
	key := fileKey{dev: uint64(st.Dev), ino: uint64(st.Ino)}
	n.mu.key = key
	if dr != nil {
		n.mu.disk = n.m.addDisk(dr, key, n, rel)
	} else {
		n.m.untracked(key, rel)
	}
	return n.mu.disk, 0
}

var _ = (gofs.NodeOnForgetter)((*node)(nil))

// OnForget releases the DiskRecorder: the kernel has dropped the inode, so
// it has no open file left.
func (n *node) OnForget() {
	n.mu.Lock()
	d := n.mu.disk
	untracked, key := n.mu.asked && d == nil, n.mu.key
	n.mu.asked = false
	n.mu.disk = nil
	n.mu.Unlock()
	if d != nil {
		n.m.releaseDisk(d)
	}
	if untracked {
		n.m.forgetUntracked(key)
	}
}

var _ = (gofs.NodeRenamer)((*node)(nil))

// Rename renames and then reports Renamed. RENAME_EXCHANGE is refused on a
// tracked mount: Renamed cannot say that two names swapped.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.m.rec != nil && flags&gofs.RENAME_EXCHANGE != 0 {
		return syscall.EINVAL
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		return errno
	}
	if n.m.rec != nil {
		from, errno1 := n.rel()
		to, errno2 := relOf(newParent)
		if errno1 == 0 && errno2 == 0 {
			n.m.rec.Renamed(path.Join(from, name), path.Join(to, newName))
		}
	}
	return 0
}

var _ = (gofs.NodeUnlinker)((*node)(nil))

// Unlink unlinks and then reports Removed.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	if errno := n.LoopbackNode.Unlink(ctx, name); errno != 0 {
		return errno
	}
	if n.m.rec != nil {
		if dir, errno := n.rel(); errno == 0 {
			n.m.rec.Removed(path.Join(dir, name))
		}
	}
	return 0
}

// metadataChanged tells the disk of the inode, if it is one, that its
// metadata changed through the mount (MetadataRecorder), after the change.
// A disk not opened through the mount yet is opened, as a truncate by path
// opens it.
func (n *node) metadataChanged() {
	if n.m.rec == nil || !n.isRegular() {
		return
	}
	rel, errno := n.rel()
	if errno != 0 {
		return
	}
	n.mu.Lock()
	asked, d := n.mu.asked, n.mu.disk
	n.mu.Unlock()
	if !asked {
		fd, err := n.m.openat(rel, unix.O_PATH, 0)
		if err != nil {
			return
		}
		var st syscall.Stat_t
		err = syscall.Fstat(fd, &st)
		unix.Close(fd)
		if err != nil {
			return
		}
		d, _ = n.diskFor(rel, &st)
	}
	if d != nil {
		d.touched()
	}
}

var _ = (gofs.NodeSetxattrer)((*node)(nil))

// Setxattr sets an extended attribute (a security label, say) and reports
// it as a metadata change.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	errno := n.LoopbackNode.Setxattr(ctx, attr, data, flags)
	if errno == 0 {
		n.metadataChanged()
	}
	return errno
}

var _ = (gofs.NodeRemovexattrer)((*node)(nil))

// Removexattr removes an extended attribute and reports it as a metadata
// change.
func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	errno := n.LoopbackNode.Removexattr(ctx, attr)
	if errno == 0 {
		n.metadataChanged()
	}
	return errno
}
