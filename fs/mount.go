package fs

import (
	"fmt"
	"log"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Options tune a mount. The zero value is what drfs uses by default.
type Options struct {
	// AllowOther lets users other than root use the mount (a hypervisor
	// that runs as its own user needs it). The kernel then checks
	// permissions against the file modes (default_permissions), since the
	// daemon itself runs as root.
	AllowOther bool

	// Debug logs every FUSE request and reply to Logger.
	Debug bool

	// Logger receives go-fuse's messages and the mount's own (a failed
	// OpenDisk or Sync). Nil means the standard logger.
	Logger *log.Logger
}

// maxRequest is the largest READ and WRITE the mount asks the kernel for:
// go-fuse passes it as max_write and max_read and derives max_pages from it
// (capped at the kernel's fs.fuse.max_pages_limit; 128 KiB before Linux
// 4.20). go-fuse's default, 128 KiB, splits a VM's 1 MiB write into eight
// WRITEs; 256 KiB makes it four, which the kernel sends at once (ASYNC_DIO)
// and the daemon records without copying them (larger than the tracker's
// gather buffer). Larger requests were measured slower or heavier: 1 MiB
// serializes a sequential writer on one request and one core, and go-fuse
// keeps one buffer of this size per request in flight, a 4 KiB one too
// (peak RSS under the write jobs 104 MiB at 256 KiB, 128 at 512 KiB, 170
// at 1 MiB; see docs/benchmarks.md).
const maxRequest = 256 << 10

// cacheTimeout is how long the kernel may keep entries and attributes.
// Every change of a file goes through the mount, so the kernel's copy only
// goes stale when someone changes the source behind the mount's back.
const cacheTimeout = time.Second

// MountOptions returns the FUSE mount options of a drfs mount. A benchmark
// mounts go-fuse's plain loopback with the same options (see NodeOptions) to
// measure what tracking costs.
//
// Kernel passthrough is disabled: with it the kernel would send WRITEs
// straight to the backing file and the daemon would never see them
// (invariant 1). So is the writeback cache, which would acknowledge writes
// before the daemon has seen them, breaking consistent cuts. Extended
// attributes are disabled because otherwise the kernel asks for
// security.capability before every write (three times slower).
func MountOptions(opts Options) *fuse.MountOptions {
	mo := &fuse.MountOptions{
		FsName:        "drfs",
		Name:          "drfs",
		AllowOther:    opts.AllowOther,
		Debug:         opts.Debug,
		Logger:        opts.Logger,
		DirectMount:   true,
		MaxBackground: 64,
		MaxWrite:      maxRequest,
		DisableXAttrs: true,
		DisabledCapabilities: fuse.CAP_PASSTHROUGH |
			fuse.CAP_WRITEBACK_CACHE,
		// ASYNC_DIO lets one O_DIRECT request of a VM be split into
		// several WRITEs in flight. ATOMIC_O_TRUNC sends O_TRUNC with OPEN
		// instead of a separate SETATTR. DIRECT_IO_ALLOW_MMAP keeps shared
		// mmap working on files opened with O_DIRECT (FOPEN_DIRECT_IO).
		ExtraCapabilities: fuse.CAP_ASYNC_DIO |
			fuse.CAP_ATOMIC_O_TRUNC |
			fuse.CAP_DIRECT_IO_ALLOW_MMAP,
	}
	if opts.AllowOther {
		mo.Options = append(mo.Options, "default_permissions")
	}
	return mo
}

// NodeOptions returns the go-fuse file system options of a drfs mount:
// MountOptions plus the kernel cache timeouts. Pass them to go-fuse's
// fs.Mount to mount the plain loopback exactly as drfs mounts its tracked
// one.
func NodeOptions(opts Options) *gofs.Options {
	timeout := cacheTimeout
	return &gofs.Options{
		MountOptions: *MountOptions(opts),
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		Logger:       opts.Logger,
	}
}

// Server is a running drfs mount.
type Server struct {
	fuse *fuse.Server
	m    *mount
	// done is closed once the serve loop has ended and every DiskRecorder
	// has been released.
	done chan struct{}
}

// Unmount unmounts the file system and waits until the mount has stopped
// and released every DiskRecorder. It fails (and the mount goes on) while a
// file of the mount is open. Calling it again after success is a no-op.
//
// While a Quiesce holds writes it first waits, up to HoldWait, for the
// holds to be released: the kernel writes dirty pages back during an
// unmount, and those writes would wait for the release inside the unmount.
// drfs's own quiesces (a snapshot's cut) last well under a second; one that
// outlasts HoldWait makes Unmount fail, and the mount goes on. From the
// start of Unmount, Quiesce and Snapshot fail with ErrClosed. Snapshots end
// with the mount: their files stay until Delete.
func (s *Server) Unmount() error {
	m := s.m
	m.mu.Lock()
	m.mu.unmounting++
	m.mu.Unlock()
	err := m.waitHolds(HoldWait)
	if err == nil {
		err = s.fuse.Unmount()
	}
	m.mu.Lock()
	m.mu.unmounting--
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("unmount %s: %w", m.mountpoint, err)
	}
	<-s.done
	return nil
}

// HoldWait is how long Unmount waits for the quiesces in place to be
// released.
var HoldWait = 30 * time.Second

// waitHolds waits until no quiesce holds writes, or fails after wait.
func (m *mount) waitHolds(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		m.mu.Lock()
		n := len(m.mu.holds)
		m.mu.Unlock()
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("writes are still held by %d quiesce(s) after %v: release them first", n, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stopped reports whether the mount has stopped (as Wait would return at
// once): no change can reach its disks through it any more.
func (s *Server) Stopped() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Wait returns once the mount has stopped (by Unmount, or by an unmount from
// outside) and every DiskRecorder has been released.
func (s *Server) Wait() {
	<-s.done
}

// Mount mounts on mountpoint a loopback of the directory source whose file
// handles report every change of a regular file to rec (see Recorder), and
// starts serving it. rec == nil mounts the same file system without
// tracking, as a baseline.
//
// It fails with a one-line error, having changed nothing, when source or
// mountpoint is not an existing directory, when something is already
// mounted on mountpoint, when the two overlap, or without root and
// /dev/fuse.
func Mount(source, mountpoint string, rec Recorder, opts Options) (*Server, error) {
	src, mnt, err := checkMount(source, mountpoint)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(src, &st); err != nil {
		return nil, fmt.Errorf("source %s: %w", src, err)
	}
	rootFd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", src, err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = log.Default()
	}
	m := &mount{
		rec:        rec,
		rootFd:     rootFd,
		mountpoint: mnt,
		logger:     logger,
	}
	m.mu.disks = make(map[*disk]struct{})
	m.mu.holds = make(map[*hold]struct{})
	m.mu.snaps = make(map[fileKey]*diskSnap)
	m.mu.untracked = make(map[fileKey]int)

	//lint:ignore SA1019 the hook hands over the stat and lets node embed LoopbackNode by value, one allocation per node
	root := &gofs.LoopbackRoot{Path: src, Dev: uint64(st.Dev), NewNode: m.newNode}
	rootNode := m.newNode(root, nil, "", &st)
	root.RootNode = rootNode

	nodeOpts := NodeOptions(opts)
	srv, err := fuse.NewServer(gofs.NewNodeFS(rootNode, nodeOpts), mnt, &nodeOpts.MountOptions)
	if err != nil {
		unix.Close(rootFd)
		return nil, fmt.Errorf("mount %s on %s: %w", src, mnt, err)
	}
	s := &Server{fuse: srv, m: m, done: make(chan struct{})}
	go func() {
		srv.Serve()
		m.close()
		close(s.done)
	}()
	if err := srv.WaitMount(); err != nil {
		// Serve ends on its own when the kernel refuses the mount;
		// unmount in case it got as far as mounting.
		srv.Unmount()
		<-s.done
		return nil, fmt.Errorf("mount %s on %s: %w", src, mnt, err)
	}
	return s, nil
}

// mount is the state shared by all nodes of one mount.
type mount struct {
	rec        Recorder // nil: no tracking
	rootFd     int      // O_PATH descriptor of the source, for openat2
	mountpoint string
	logger     *log.Logger

	mu struct {
		sync.Mutex
		// disks are the DiskRecorders opened and not yet released.
		disks  map[*disk]struct{}
		closed bool
		// unmounting counts the Unmount calls in progress.
		unmounting int
		// holds are the quiesces in place.
		holds map[*hold]struct{}
		// snaps are the snapshots in place, by backing file: a disk
		// opened later finds its snapshot here.
		snaps map[fileKey]*diskSnap
		// untracked counts the nodes of each file that the Recorder
		// does not track (OpenDisk returned nil): they cannot be in a
		// snapshot.
		untracked map[fileKey]int
	}
}

// addDisk makes the disk of rec, the DiskRecorder of the file at rel
// (device and inode in key) of node n, and registers it so that it is
// released when the mount closes. The disk starts held by every quiesce
// that covers rel, and with the snapshot of its file, if there is one.
func (m *mount) addDisk(rec DiskRecorder, key fileKey, n *node, rel string) *disk {
	m.mu.Lock()
	defer m.mu.Unlock()
	bs := rec.BlockSize()
	ds := m.mu.snaps[key]
	if ds != nil {
		// A block saved for the snapshot must lie within one locked
		// block.
		bs = max(bs, 1<<ds.shift)
	}
	d := &disk{rec: rec, lock: newBlockLock(bs), key: key, node: n}
	if m.mu.closed {
		rec.Release()
		return d
	}
	m.mu.disks[d] = struct{}{}
	m.holdNewDiskLocked(d, rel)
	if ds != nil {
		d.snap.Store(ds)
	}
	return d
}

// releaseDisk releases d unless the mount already did.
func (m *mount) releaseDisk(d *disk) {
	m.mu.Lock()
	_, ok := m.mu.disks[d]
	delete(m.mu.disks, d)
	m.mu.Unlock()
	if ok {
		d.rec.Release()
	}
}

// close releases every disk still open. It runs once, after the serve loop
// has ended, so no request is running.
func (m *mount) close() {
	m.mu.Lock()
	m.mu.closed = true
	disks := m.mu.disks
	m.mu.disks = nil
	for _, ds := range m.mu.snaps {
		// Changes made from now on, outside the mount, are not
		// preserved.
		ds.fail(ErrClosed)
	}
	m.mu.Unlock()
	for d := range disks {
		d.rec.Release()
	}
	unix.Close(m.rootFd)
}

// openat opens rel (relative to the source) refusing symlinks in any
// component, so that a path swapped for a symlink cannot lead outside the
// source.
func (m *mount) openat(rel string, flags int, mode uint32) (int, error) {
	if rel == "" {
		rel = "."
	}
	how := unix.OpenHow{
		Flags:   uint64(flags) | unix.O_CLOEXEC,
		Mode:    uint64(mode & 0o7777), // openat2 refuses the file type bits FUSE sends
		Resolve: unix.RESOLVE_NO_SYMLINKS,
	}
	for {
		fd, err := unix.Openat2(m.rootFd, rel, &how)
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}
