// Package target is the contract between the source side (shipper, resync,
// orchestrator) and the places replicas live: a directory store, a remote
// server in front of any store, or Azure Blob page blobs. It defines only the
// interface, its capabilities and its error kinds; each store is a peer
// package under target/, and every one passes target/storetest.
package target

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Point is a recovery point: the state of every disk of a VM at the cut
// between generation Generation and the next one.
type Point struct {
	VM         string     `json:"vm"`
	Generation uint64     `json:"generation"`
	Frozen     time.Time  `json:"frozen"`  // when the source froze the generation
	Applied    time.Time  `json:"applied"` // when the store made the point visible
	Kind       PointKind  `json:"kind"`
	Disks      []DiskInfo `json:"disks"`
	Bytes      int64      `json:"bytes"` // uncompressed bytes of data applied for this point
	// AppConsistent is set when an application-consistency hook succeeded
	// around the rotation; otherwise the point is crash-consistent.
	AppConsistent bool `json:"app_consistent"`
}

// ID names the point on the command line.
func (p Point) ID() string { return fmt.Sprint(p.Generation) }

// PointKind says how a point came to be.
type PointKind string

const (
	KindGeneration PointKind = "generation" // a shipped generation of the change log
	KindResync     PointKind = "resync"     // the end of a resynchronization read from the live disks: fuzzy
	KindInitial    PointKind = "initial"    // the end of initial replication read from the live disks: fuzzy
	// KindSnapshot is the end of an initial copy or a resynchronization
	// read from a snapshot taken at the generation's cut (or from disks
	// nothing wrote to any more): the disks as they were at the cut.
	KindSnapshot PointKind = "snapshot"
)

// Consistent reports whether a point of kind k holds the VM's disks as they
// were at one instant, its cut (crash-consistent): a generation of the log
// or a copy read from a snapshot. Initial and resync copies read from the
// live disks are fuzzy: restore them only when nothing better exists.
func (k PointKind) Consistent() bool { return k == KindGeneration || k == KindSnapshot }

// DiskInfo is one disk of a point.
type DiskInfo struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Commit describes the point a Commit creates.
type Commit struct {
	Source        string // identity of the source host; a store refuses a VM owned by another source
	Frozen        time.Time
	Kind          PointKind
	Disks         []string // every disk of the VM at the cut, staged or not (unchanged disks stage nothing)
	AppConsistent bool
}

// Store holds the replicas of VMs and their recovery points.
//
// A store receives a generation in two steps: Stage, once per disk that
// changed, then Commit. Nothing is visible before Commit, and Commit either
// applies every staged disk of the generation or none (invariant 5).
//
// All methods are safe for concurrent use on different VMs. Calls on one
// VM are serialised by the caller (one shipper per VM), with one exception
// every store must allow: the Stage calls of a generation may run while
// the Commit of the previous one does (the shipper sends the next
// generation while the target applies one), and neither may disturb the
// other. A store may reject other concurrent calls with a retryable error.
//
// Errors: an error for which IsPermanent reports true will fail again if
// retried unchanged (bad input, wrong source, corrupt data, unknown VM,
// missing point, authentication); any other error is retryable (network,
// timeout, a full disk that may be freed).
//
// Names: a VM name is one path element, a disk name a relative
// slash-separated path; neither may be empty, longer than 255 bytes, invalid
// UTF-8, contain NUL, or have an empty, "." or ".." element (ErrBadName).
type Store interface {
	// Stage stores the stream (internal/frame format) of one disk of
	// generation gen of vm, verifying every checksum, durably but not
	// visibly. Idempotent: staging the same disk again replaces what was
	// staged. A stream that fails verification or is cut short stages
	// nothing and returns an error wrapping ErrCorrupt (permanent) or a
	// retryable error.
	Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error

	// Commit applies the staged disks of generation gen and makes it the
	// newest recovery point of vm. Idempotent: committing a generation the
	// store already holds returns nil and changes nothing. A generation
	// older than the newest point, or a commit whose staged disks are
	// missing, is a permanent error.
	//
	// Each staged stream applies on the newest point: its frame header's
	// Base is that point's generation. A disk the newest point does not
	// hold (new, or removed and added again) starts empty, and its stream
	// has Base 0 or the newest generation. Any other Base is a broken chain:
	// ErrOutOfOrder.
	Commit(ctx context.Context, vm string, gen uint64, c Commit) error

	// VMs lists the VMs the store holds, sorted.
	VMs(ctx context.Context) ([]string, error)

	// Points lists the recovery points of vm, oldest first. An unknown VM
	// is ErrNotFound.
	Points(ctx context.Context, vm string) ([]Point, error)

	// Open reads disk of vm as it was at recovery point gen. An unknown
	// VM, disk or point (or one that expired) is ErrNotFound. The reader
	// keeps reading that point while later generations are committed.
	Open(ctx context.Context, vm string, gen uint64, disk string) (DiskReader, error)

	// Expire drops the recovery points of vm older than before (by their
	// Frozen time, or Applied where Frozen is zero), keeping at least keep
	// points; the newest point is never dropped. Expiring a point merges it
	// into its successor for good. A store may keep a point longer while a
	// DiskReader of it is open.
	Expire(ctx context.Context, vm string, before time.Time, keep int) error
}

// DiskReader reads one disk of a recovery point.
type DiskReader interface {
	io.ReaderAt
	io.Closer
	// Size is the disk's size at the point.
	Size() int64
	// Extents lists the allocated byte ranges in order; ranges outside them
	// read as zeros, so a restore can keep the copy sparse.
	Extents() ([]Extent, error)
}

// Overlayer is a capability of a DiskReader whose store keeps the newest
// point of a disk as a file (its replica) and older points as undo data
// over it. Overlay calls fn, in ascending order, for the byte ranges where
// the reader's point differs from the replica file as it is now: data holds
// the point's bytes of [off, off+len(data)), or is nil for a range of n
// zeros. A point is then made by copying the replica (a reflink, where the
// file system has them), setting its size, and writing these ranges: a cost
// of the undo data, not of the disk. The replica must not change meanwhile
// (the caller holds the store). data is valid only during the call.
type Overlayer interface {
	Overlay(fn func(off, n int64, data []byte) error) error
}

// Extent is a byte range [Off, Off+Len).
type Extent struct{ Off, Len int64 }

// Checksummer is a capability of a Store: it computes checksums of chunks
// of a point's disk where the replica lives, so that resynchronization
// compares a source disk with its replica by moving checksums rather than
// the replica's bytes. Callers detect it with a type assertion; package
// resync falls back to reading through Open for a store without it (or
// whose Checksums returns an error wrapping errors.ErrUnsupported).
//
// Checksums returns the sums of the chunks of disk of vm at point gen that
// make up ranges, in order: for each range, its chunks from Off up to
// Off+Len. chunk is a power of two from MinChunk to MaxChunk; every range
// starts at a multiple of chunk, has a length that is a non-zero multiple
// of chunk, and comes after the previous one without overlap; the ranges
// hold at most MaxSums chunks in all. A request that breaks these rules is
// a permanent error. Ranges may reach past the disk's size: the disk reads
// as zeros there.
//
// The sum of a chunk is defined on its chunk bytes, those past the disk's
// end counted as zeros: ZeroSum (the zero Sum) if every byte is zero,
// otherwise the 128-bit XXH3 hash of the bytes (XXH3_128bits, seed 0), high
// half first, each half big-endian. A chunk that holds only holes needs no
// read: an implementation should find holes (Extents, SEEK_DATA) and read
// only allocated bytes. Package resync has the reference implementation
// (chunksum.Sums).
//
// Checksums is safe for concurrent use and changes nothing; it is
// idempotent. Errors are as for Open (ErrNotFound for an unknown VM, point
// or disk; ErrBadName), and retryable ones for the transport or the disk.
type Checksummer interface {
	Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []Extent) ([]Sum, error)
}

// Sum is the checksum of one chunk; see Checksummer.
type Sum [16]byte

// ZeroSum is the sum of a chunk that reads as zeros.
var ZeroSum Sum

// Limits of a Checksums request.
const (
	MinChunk = 512
	MaxChunk = 64 << 20
	MaxSums  = 1 << 16
)

// Error kinds. Stores wrap them with context; callers test with errors.Is.
var (
	ErrNotFound    = errors.New("not found")
	ErrCorrupt     = errors.New("corrupt stream")
	ErrWrongSource = errors.New("belongs to another source")
	ErrBadName     = errors.New("invalid name")
	ErrOutOfOrder  = errors.New("generation out of order")
	ErrAuth        = errors.New("not authorised")
)

// IsPermanent reports whether err will fail again if the call is retried
// unchanged.
func IsPermanent(err error) bool {
	var p interface{ Permanent() bool }
	if errors.As(err, &p) {
		return p.Permanent()
	}
	for _, kind := range []error{ErrNotFound, ErrCorrupt, ErrWrongSource, ErrBadName, ErrOutOfOrder, ErrAuth} {
		if errors.Is(err, kind) {
			return true
		}
	}
	return false
}
