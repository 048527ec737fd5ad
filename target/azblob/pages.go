package azblob

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/pageblob"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/target"
)

// This file is the data path of Commit: a staged stream applied to a disk's
// page blob.

// applyDisk applies the staged stream d of generation gen to its disk blob.
// prev is the disk at the newest point (nil if it has none). It is
// idempotent: applying it again writes the same bytes.
func (s *Store) applyDisk(ctx context.Context, vm string, gen uint64, d stagedDisk, prev *pointDisk, seq *atomic.Int64) error {
	prevSize := int64(-1)
	if prev != nil && !d.Reset {
		prevSize = prev.Size
	}
	sname := s.stagedBlob(vm, gen, d.Name)
	resp, err := s.cc.NewBlobClient(sname).DownloadStream(ctx, &blob.DownloadStreamOptions{
		AccessConditions: &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: ptr(azcore.ETag(d.ETag))}},
	})
	if st, _ := statusOf(err); st == http.StatusNotFound || st == http.StatusPreconditionFailed {
		return broken("the staged stream %s is gone or was replaced since the commit began, so the commit cannot be finished; "+
			"disk blob %s may hold part of generation %d: resynchronize disk %s", sname, s.diskBlob(vm, d.Name), gen, d.Name)
	}
	if err != nil {
		return s.fail("read staged stream", sname, err)
	}
	body := resp.NewRetryReader(ctx, &blob.RetryReaderOptions{MaxRetries: 5})
	defer body.Close()
	fr, err := frame.NewReader(bufio.NewReaderSize(body, 1<<20), frame.Limits{})
	if err != nil {
		return stagedError(s, sname, err)
	}
	h := fr.Header()
	if int64(h.DiskSize) != d.Size {
		return broken("staged stream %s: disk size %d, its metadata says %d", sname, h.DiskSize, d.Size)
	}
	name := s.diskBlob(vm, d.Name)
	pb := s.cc.NewPageBlobClient(name)
	fence, err := s.prepareBlob(ctx, pb, name, gen, d, prevSize)
	if err != nil {
		return err
	}
	// What the newest point holds, for the gaps: nothing in a new blob;
	// else the blob's page ranges, unless gaps are not bridged.
	base := &baseView{name: name, known: prevSize <= 0 || d.Size == 0}
	if prevSize > 0 && d.Size > 0 && s.gap > 0 {
		if base, err = s.newBaseView(ctx, pb, name); err != nil {
			return err
		}
	}
	w := s.newPageWriter(ctx, pb, name, d.Size, base, fence, seq)
	bs := int64(h.BlockSize)
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err == nil {
			off := int64(rec.Block) * bs
			if rec.Kind == frame.KindData {
				err = w.data(off, rec.Data)
			} else {
				err = w.zero(off, min(off+int64(rec.Count)*bs, d.Size)-off)
			}
		} else {
			err = stagedError(s, sname, err)
		}
		if err != nil {
			w.abort()
			return err
		}
	}
	return w.close()
}

// stagedError maps an error reading a staged stream: the stream was
// verified when it was staged, so a decoding error means it was damaged
// since (permanent); a transport error is retryable.
func stagedError(s *Store, name string, err error) error {
	if errors.Is(err, frame.ErrCorrupt) || errors.Is(err, frame.ErrTruncated) ||
		errors.Is(err, frame.ErrVersion) || errors.Is(err, frame.ErrLimit) {
		return fmt.Errorf("azblob: staged stream %s: %w: %w", name, target.ErrCorrupt, err)
	}
	return s.fail("read staged stream", name, err)
}

// prepareBlob makes the disk blob ready for the page writes of generation
// gen: created (a disk new to the newest point) or resized, its metadata
// set, and fenced. The fence is the blob's sequence number, raised to gen
// here: every change this commit makes to the blob carries the condition
// "sequence number <= gen" (the returned conditions) or the ETag that
// followed raising it, so an applier of an older generation that lingers
// (a process presumed dead, a request the service runs late) cannot
// overwrite what a newer commit wrote. It gets errFenced, which is
// retryable: its retry finds its generation committed.
func (s *Store) prepareBlob(ctx context.Context, pb *pageblob.Client, name string, gen uint64, d stagedDisk, prevSize int64) (*pageblob.SequenceNumberAccessConditions, error) {
	seq := int64(gen)
	fence := &pageblob.SequenceNumberAccessConditions{IfSequenceNumberLessThanOrEqualTo: &seq}
	props, err := pb.GetProperties(ctx, nil)
	exists := err == nil
	if err != nil && !isNotFound(err) {
		return nil, s.fail("read properties", name, err)
	}
	if exists {
		kind, _ := meta(props.Metadata, metaKind)
		if kind != kindReplica || props.BlobType == nil || *props.BlobType != blob.BlobTypePageBlob {
			return nil, broken("blob %s exists and is not a drfs replica disk: remove it, or use another container or prefix", name)
		}
		if props.BlobSequenceNumber != nil && *props.BlobSequenceNumber > seq {
			return nil, fenced(name, gen, *props.BlobSequenceNumber)
		}
	}
	if !exists && !d.Reset {
		// The stream applies on the newest point's contents, which are gone
		// (with the blob's snapshots: the service deletes a blob only with
		// them). Applying it to an empty blob would make a wrong point.
		return nil, broken("disk blob %s is gone, but the newest point holds the disk: restore it from a point or resynchronize the disk", name)
	}
	md := map[string]*string{metaKind: ptr(kindReplica), metaSize: ptr(strconv.FormatInt(d.Size, 10))}
	want := roundUp(d.Size)
	if d.Reset {
		if created, _ := meta(props.Metadata, metaCreated); exists && created == strconv.FormatUint(gen, 10) {
			// Created by an earlier attempt at this commit: it holds zeros
			// and pages of this generation, which the writes bring to the
			// whole generation. Creating it again could wipe pages another
			// attempt already wrote.
			return fence, nil
		}
		// Over an earlier blob of the disk (removed from the VM and added
		// again), the snapshots of older points stay as they are. Only the
		// blob just read is replaced, or none if there was none.
		md[metaCreated] = ptr(strconv.FormatUint(gen, 10))
		cond := &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: ptr(azcore.ETagAny)}}
		if exists {
			cond = ifMatch(props.ETag)
		}
		_, err := pb.Create(ctx, want, &pageblob.CreateOptions{Metadata: md, SequenceNumber: &seq, AccessConditions: cond})
		if err != nil {
			return nil, s.fail("create page blob", name, err)
		}
		return fence, nil
	}
	max := pageblob.SequenceNumberActionTypeMax
	if _, err := pb.UpdateSequenceNumber(ctx, &pageblob.UpdateSequenceNumberOptions{ActionType: &max, SequenceNumber: &seq,
		AccessConditions: ifMatch(props.ETag)}); err != nil {
		return nil, s.fail("raise the sequence number of", name, err)
	}
	// Resize and Set Metadata take no sequence number condition: each is
	// made conditional on the ETag of the blob read with the sequence
	// number still at gen. (The ETag in the replies of Update Sequence
	// Number and Resize cannot be used: the emulator's differs from the
	// blob's.)
	if props.ContentLength == nil || *props.ContentLength != want {
		etag, err := s.fencedETag(ctx, pb, name, gen)
		if err != nil {
			return nil, err
		}
		if _, err := pb.Resize(ctx, want, &pageblob.ResizeOptions{AccessConditions: ifMatch(etag)}); err != nil {
			return nil, s.fail("resize", name, err)
		}
	}
	// Bytes past the true size in its last page read as zeros: a disk that
	// shrank into a page has that page's tail cleared, so that growing
	// again shows zeros there.
	if prevSize > d.Size && d.Size%pageSize != 0 {
		if err := s.zeroTail(ctx, pb, name, d.Size, fence); err != nil {
			return nil, err
		}
	}
	if cur, ok := metaInt(props.Metadata, metaSize); !ok || cur != d.Size {
		etag, err := s.fencedETag(ctx, pb, name, gen)
		if err != nil {
			return nil, err
		}
		if _, err := pb.SetMetadata(ctx, md, &blob.SetMetadataOptions{AccessConditions: ifMatch(etag)}); err != nil {
			return nil, s.fail("set metadata", name, err)
		}
	}
	return fence, nil
}

// fencedETag returns the blob's ETag after checking that its sequence
// number is still gen (see prepareBlob).
func (s *Store) fencedETag(ctx context.Context, pb *pageblob.Client, name string, gen uint64) (*azcore.ETag, error) {
	props, err := pb.GetProperties(ctx, nil)
	if err != nil {
		return nil, s.fail("read properties", name, err)
	}
	// A page blob's properties always carry its sequence number; were it
	// missing, the ETag alone still fences.
	if seq := props.BlobSequenceNumber; seq != nil && *seq != int64(gen) {
		return nil, fenced(name, gen, *seq)
	}
	return props.ETag, nil
}

func ifMatch(etag *azcore.ETag) *blob.AccessConditions {
	return &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfMatch: etag}}
}

// zeroTail clears the bytes from size to the end of its page.
func (s *Store) zeroTail(ctx context.Context, pb *pageblob.Client, name string, size int64, fence *pageblob.SequenceNumberAccessConditions) error {
	off := size &^ (pageSize - 1)
	page := make([]byte, pageSize)
	if _, err := pb.DownloadBuffer(ctx, page, &blob.DownloadBufferOptions{Range: blob.HTTPRange{Offset: off, Count: pageSize}}); err != nil {
		return s.fail("read last page", name, err)
	}
	clear(page[size-off:])
	sum := md5.Sum(page)
	_, err := pb.UploadPages(ctx, streaming.NopCloser(bytes.NewReader(page)), blob.HTTPRange{Offset: off, Count: pageSize},
		&pageblob.UploadPagesOptions{TransactionalValidation: blob.TransferValidationTypeMD5(sum[:]), SequenceNumberAccessConditions: fence})
	return s.fail("write last page", name, err)
}

// pageWriter turns the records of a stream into page writes, sent by
// parallel workers. Records come in ascending, disjoint order; a run of
// them becomes one write of up to the store's page write size: consecutive
// data blocks, and across a gap of at most the store's gap size the bytes
// the newest point holds there (read-modify-write: the gap is read from the
// base, see gaps.go), and zero extents up to the gap size. Larger zero
// extents become Clear Pages, or nothing where the base is a hole (the blob
// holds zeros there already). The writes never overlap, so they may land in
// any order.
type pageWriter struct {
	s     *Store
	pb    *pageblob.Client
	name  string
	size  int64 // the disk's true size
	limit int64
	gap   int64                                    // largest gap a data run bridges; 0: none
	base  *baseView                                // the newest point's contents, for the gaps
	fence *pageblob.SequenceNumberAccessConditions // see prepareBlob

	ctx    context.Context
	cancel context.CancelFunc
	ops    chan pageOp
	bufs   chan []byte // free buffers; at most parallel+2 exist
	wg     sync.WaitGroup
	seq    *atomic.Int64 // the commit's page writes so far

	// The run being built: data (buf from off, with gaps to fill from the
	// base) or zeros (n bytes from off).
	zeros bool
	off   int64
	buf   []byte
	gaps  []extent
	n     int64

	mu  sync.Mutex
	err error
}

// pageOp is one page write (data, with the gaps to fill from the base
// first) or clear (data nil, n bytes).
type pageOp struct {
	off  int64
	data []byte
	gaps []extent
	n    int64
}

func (s *Store) newPageWriter(ctx context.Context, pb *pageblob.Client, name string, size int64, base *baseView, fence *pageblob.SequenceNumberAccessConditions, seq *atomic.Int64) *pageWriter {
	w := &pageWriter{
		s: s, pb: pb, name: name, size: size, limit: int64(s.pageWrite), gap: int64(s.gap), base: base, fence: fence, seq: seq,
		ops: make(chan pageOp), bufs: make(chan []byte, s.parallel+2),
	}
	w.ctx, w.cancel = context.WithCancel(ctx)
	for range cap(w.bufs) {
		w.bufs <- nil // allocated on first use
	}
	for range s.parallel {
		w.wg.Go(w.work)
	}
	return w
}

// data adds a data block at off (len(b) short only at the disk's end).
func (w *pageWriter) data(off int64, b []byte) error {
	if zero.Is(b) {
		return w.zero(off, int64(len(b)))
	}
	padded := roundUp(int64(len(b)))
	for pos := int64(0); pos < padded; {
		at := off + pos
		if !w.extend(at) {
			if err := w.flush(); err != nil {
				return err
			}
			if err := w.startData(at); err != nil {
				return err
			}
		}
		n := min(padded-pos, w.limit-int64(len(w.buf)))
		start := len(w.buf)
		w.buf = w.buf[:start+int(n)]
		clear(w.buf[start:])
		if pos < int64(len(b)) {
			copy(w.buf[start:], b[pos:min(pos+n, int64(len(b)))])
		}
		pos += n
	}
	return nil
}

// extend says whether the data run being built goes on at at, a page
// boundary: right after its end, or across a gap of at most the gap size,
// with room left in the write. The gap is added to the run as a range to
// fill from the base (or as zeros, where the base is a hole).
func (w *pageWriter) extend(at int64) bool {
	if w.zeros || len(w.buf) == 0 {
		return false
	}
	end := w.off + int64(len(w.buf))
	if at < end || at-end > w.gap || at-w.off >= w.limit {
		return false
	}
	if at > end {
		start := len(w.buf)
		w.buf = w.buf[:at-w.off]
		clear(w.buf[start:])
		if !w.base.hole(end, at) {
			w.gaps = append(w.gaps, extent{end, at})
		}
		w.s.stats.gapBytes.Add(at - end)
	}
	return true
}

func (w *pageWriter) startData(off int64) error {
	select {
	case b := <-w.bufs:
		if b == nil {
			b = make([]byte, 0, w.limit)
		}
		w.zeros, w.off, w.buf = false, off, b[:0]
		return nil
	case <-w.ctx.Done():
		return w.failed()
	}
}

// zero adds n bytes of zeros at off (off+n is at most the disk's size).
func (w *pageWriter) zero(off, n int64) error {
	if n <= 0 {
		return nil
	}
	end := roundUp(off + n)
	if w.zeros && w.n > 0 && w.off+w.n == off {
		w.n = end - w.off
		return nil
	}
	if w.base.hole(off, end) {
		// The blob holds zeros here at the newest point, and this
		// generation writes nothing else here: nothing to do. A data run
		// may still bridge it as a gap (of zeros).
		return nil
	}
	if end-off <= w.gap && end-w.off <= w.limit && w.extend(off) {
		// A small zero extent inside a data run: written as zeros, which
		// saves a Clear Pages and lets the run go on.
		start := len(w.buf)
		w.buf = w.buf[:end-w.off]
		clear(w.buf[start:])
		return nil
	}
	if err := w.flush(); err != nil {
		return err
	}
	w.zeros, w.off, w.n = true, off, end-off
	return nil
}

// flush hands the run to the workers.
func (w *pageWriter) flush() error {
	var op pageOp
	switch {
	case w.zeros && w.n > 0:
		op = pageOp{off: w.off, n: w.n}
	case !w.zeros && len(w.buf) > 0:
		op = pageOp{off: w.off, data: w.buf, gaps: w.gaps, n: int64(len(w.buf))}
	default:
		return w.failed()
	}
	w.buf, w.gaps, w.n = nil, nil, 0
	select {
	case w.ops <- op:
		return nil
	case <-w.ctx.Done():
		return w.failed()
	}
}

func (w *pageWriter) work() {
	var scratch []byte // gap reads
	for op := range w.ops {
		if w.ctx.Err() == nil {
			w.do(op, &scratch)
		}
		if op.data != nil {
			w.bufs <- op.data
		}
	}
}

func (w *pageWriter) do(op pageOp, scratch *[]byte) {
	n := w.seq.Add(1)
	w.s.pageWrites.Add(1)
	if w.s.pageHook != nil {
		if err := w.s.pageHook(n); err != nil {
			w.setErr(err)
			return
		}
	}
	rng := blob.HTTPRange{Offset: op.off, Count: op.n}
	var err error
	if op.data == nil {
		w.s.stats.clears.Add(1)
		_, err = w.pb.ClearPages(w.ctx, rng, &pageblob.ClearPagesOptions{SequenceNumberAccessConditions: w.fence})
		err = w.s.fail(fmt.Sprintf("clear pages [%d, +%d) of", op.off, op.n), w.name, err)
	} else {
		if len(op.gaps) > 0 {
			if err := w.base.fill(w.ctx, w.s, op.data, op.off, op.gaps, scratch); err != nil {
				w.setErr(err)
				return
			}
		}
		w.s.stats.writes.Add(1)
		w.s.stats.writeBytes.Add(op.n)
		sum := md5.Sum(op.data)
		_, err = w.pb.UploadPages(w.ctx, streaming.NopCloser(bytes.NewReader(op.data)), rng,
			&pageblob.UploadPagesOptions{TransactionalValidation: blob.TransferValidationTypeMD5(sum[:]), SequenceNumberAccessConditions: w.fence})
		err = w.s.fail(fmt.Sprintf("write pages [%d, +%d) of", op.off, op.n), w.name, err)
	}
	if err != nil {
		w.setErr(err)
	}
}

func (w *pageWriter) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.cancel()
}

// failed returns the first error of a worker, or the context's.
func (w *pageWriter) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	return w.ctx.Err()
}

// close sends the last run, waits for the workers and returns the first
// error.
func (w *pageWriter) close() error {
	err := w.flush()
	close(w.ops)
	w.wg.Wait()
	w.cancel()
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// abort stops the workers after an error of the caller's.
func (w *pageWriter) abort() {
	w.cancel()
	close(w.ops)
	w.wg.Wait()
}

// DefaultGap is the gap Commit bridges unless Options.Gap says otherwise:
// chosen by measurement on Azurite (docs/benchmarks.md), where a request
// costs about as much as moving 200 KiB.
const DefaultGap = 128 << 10

// applyStats counts the requests and bytes of Commit's data path.
type applyStats struct {
	writes, clears, gapReads, baseLists atomic.Int64
	writeBytes, gapBytes, gapReadBytes  atomic.Int64
}

// Stats are counters of a Store's requests and bytes on Commit's data path
// since it was opened, for benchmarks.
type Stats struct {
	PageWrites   int64 // Put Page requests
	WriteBytes   int64 // bytes they carried
	GapBytes     int64 // of those, bytes of gaps between dirty blocks
	GapReads     int64 // ranged GETs of gaps from the newest point
	GapReadBytes int64 // bytes they read
	Clears       int64 // Clear Pages requests
	RangeLists   int64 // Get Page Ranges requests (the newest point's allocated ranges)
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	t := &s.stats
	return Stats{
		PageWrites: t.writes.Load(), WriteBytes: t.writeBytes.Load(), GapBytes: t.gapBytes.Load(),
		GapReads: t.gapReads.Load(), GapReadBytes: t.gapReadBytes.Load(), Clears: t.clears.Load(),
		RangeLists: t.baseLists.Load(),
	}
}
