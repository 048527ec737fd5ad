package azblob

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/target"
)

// readWindow is how much a DiskReader reads from the service at once (and
// keeps) for small reads.
const readWindow = 4 << 20

// Open returns a reader of disk of vm as it was at point gen: it reads the
// disk blob's snapshot of that point, which later commits do not change.
// Extents come from the snapshot's page ranges (Get Page Ranges; not the
// service's diff of two snapshots, which emulators get wrong).
func (s *Store) Open(ctx context.Context, vm string, gen uint64, disk string) (target.DiskReader, error) {
	r, err := s.open(ctx, vm, gen, disk)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (s *Store) open(ctx context.Context, vm string, gen uint64, disk string) (*diskReader, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	if err := checkDisk(disk); err != nil {
		return nil, err
	}
	m, _, err := s.readManifest(ctx, vm)
	if err != nil {
		return nil, err
	}
	if len(m.Points) == 0 {
		return nil, notFoundVM(vm)
	}
	p := m.find(gen)
	if p == nil {
		return nil, fmt.Errorf("azblob: VM %s point %d: %w", vm, gen, target.ErrNotFound)
	}
	d := p.disk(disk)
	if d == nil {
		return nil, fmt.Errorf("azblob: VM %s point %d disk %s: %w", vm, gen, disk, target.ErrNotFound)
	}
	name := s.diskBlob(vm, disk)
	pb, err := s.cc.NewPageBlobClient(name).WithSnapshot(d.Snapshot)
	if err != nil {
		return nil, broken("VM %s point %d disk %s: snapshot %q: %v", vm, gen, disk, d.Snapshot, err)
	}
	props, err := pb.GetProperties(ctx, nil)
	if isNotFound(err) {
		return nil, broken("VM %s point %d disk %s: the manifest names snapshot %s of blob %s, which is gone", vm, gen, disk, d.Snapshot, name)
	}
	if err != nil {
		return nil, s.fail("read properties", name, err)
	}
	kind, _ := meta(props.Metadata, metaKind)
	size, ok := metaInt(props.Metadata, metaSize)
	if kind != kindReplica || !ok || size != d.Size || props.ContentLength == nil || *props.ContentLength != roundUp(d.Size) {
		return nil, broken("VM %s point %d disk %s: snapshot %s of blob %s is not the drfs replica the manifest describes (size %d)",
			vm, gen, disk, d.Snapshot, name, d.Size)
	}
	s.pin(vm, gen, 1)
	return &diskReader{s: s, vm: vm, gen: gen, name: name, pb: pb, size: d.Size}, nil
}

func (s *Store) pin(vm string, gen uint64, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := pinKey{vm, gen}
	s.pins[k] += n
	if s.pins[k] <= 0 {
		delete(s.pins, k)
	}
}

func (s *Store) pinned(vm string, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pins[pinKey{vm, gen}] > 0
}

// diskReader reads one disk at one point from its snapshot. ReadAt and
// Extents may be called concurrently; they take turns.
type diskReader struct {
	s    *Store
	vm   string
	gen  uint64
	name string
	pb   *pageblob.Client
	size int64

	mu      sync.Mutex // guards the fields below
	closed  bool
	exts    []target.Extent
	extsOK  bool
	win     []byte // the disk's bytes from winOff
	winOff  int64
	winUsed bool
}

func (r *diskReader) Size() int64 { return r.size }

func (r *diskReader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.win = nil
		r.s.pin(r.vm, r.gen, -1)
	}
	return nil
}

// ReadAt reads from the snapshot: small reads through a window of
// readWindow bytes, large ones straight into p.
func (r *diskReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("azblob: read at negative offset %d", off)
	}
	if off >= r.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), r.size-off))
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0, fmt.Errorf("azblob: read of %s point %d after Close", r.name, r.gen)
	}
	if n >= readWindow {
		if err := r.download(p[:n], off); err != nil {
			return 0, err
		}
	} else {
		for done := 0; done < n; {
			at := off + int64(done)
			if !r.winUsed || at < r.winOff || at >= r.winOff+int64(len(r.win)) {
				wo := at &^ (readWindow - 1)
				if r.win == nil {
					r.win = make([]byte, readWindow)
				}
				r.win = r.win[:min(readWindow, r.size-wo)]
				r.winUsed = false
				if err := r.download(r.win, wo); err != nil {
					return done, err
				}
				r.winOff, r.winUsed = wo, true
			}
			done += copy(p[done:n], r.win[at-r.winOff:])
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// download fills b with the disk's bytes at off; ranges known to be holes
// are not read.
func (r *diskReader) download(b []byte, off int64) error {
	if r.extsOK && !overlaps(r.exts, off, off+int64(len(b))) {
		clear(b)
		return nil
	}
	_, err := r.pb.DownloadBuffer(context.Background(), b, &blob.DownloadBufferOptions{
		Range: blob.HTTPRange{Offset: off, Count: int64(len(b))}, Concurrency: 4, BlockSize: readWindow,
	})
	return r.fail(fmt.Sprintf("read [%d, +%d) of point %d of", off, len(b), r.gen), err)
}

// fail is Store.fail for the reader's snapshot, which is gone when the
// point expired: another process's Expire does not see this one's pins.
// Snapshots never change, so a reader returns its point's bytes or this
// error, never another point's.
func (r *diskReader) fail(op string, err error) error {
	if isNotFound(err) {
		return fmt.Errorf("azblob: VM %s point %d expired while it was read (its snapshot of %s is gone): %w", r.vm, r.gen, r.name, target.ErrNotFound)
	}
	return r.s.fail(op, r.name, err)
}

func overlaps(exts []target.Extent, from, to int64) bool {
	for _, e := range exts {
		if e.Off < to && e.Off+e.Len > from {
			return true
		}
	}
	return false
}

// Extents lists the snapshot's page ranges within the disk's size.
func (r *diskReader) Extents() ([]target.Extent, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.extsOK {
		return append([]target.Extent(nil), r.exts...), nil
	}
	var exts []target.Extent
	pager := r.pb.NewGetPageRangesPager(nil)
	for r.size > 0 && pager.More() {
		page, err := pager.NextPage(context.Background())
		if err != nil {
			return nil, r.fail(fmt.Sprintf("page ranges of point %d of", r.gen), err)
		}
		for _, pr := range page.PageRange {
			if pr.Start == nil || pr.End == nil {
				continue
			}
			start, end := *pr.Start, min(*pr.End+1, r.size)
			if end <= start {
				continue
			}
			if n := len(exts); n > 0 && exts[n-1].Off+exts[n-1].Len >= start {
				last := &exts[n-1]
				last.Len = max(last.Len, end-last.Off)
				continue
			}
			exts = append(exts, target.Extent{Off: start, Len: end - start})
		}
	}
	r.exts, r.extsOK = exts, true
	return append([]target.Extent(nil), exts...), nil
}

// Checksums computes the sums of chunks of disk of vm at point gen by
// reading the point's snapshot: the service computes nothing, so the bytes
// come to this process, but only the allocated page ranges are read and
// holes cost nothing.
func (s *Store) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	if err := checkDisk(disk); err != nil {
		return nil, err
	}
	if err := chunksum.CheckRequest(chunk, ranges); err != nil {
		return nil, fmt.Errorf("azblob: %w", err)
	}
	r, err := s.open(ctx, vm, gen, disk)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sums, _, err := chunksum.OfReader(ctx, r, chunk, ranges)
	if err != nil {
		return nil, fmt.Errorf("azblob: checksums of %s/%s point %d: %w", vm, disk, gen, err)
	}
	return sums, nil
}
