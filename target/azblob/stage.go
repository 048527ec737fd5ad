package azblob

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// Stage receives the stream of one disk of generation gen of vm into its
// staging block blob, decoding and verifying it as it arrives: blocks go
// up as the stream comes (uncommitted, so invisible), and the block list is
// committed only once the trailer has checked the whole stream. A stream
// that fails commits nothing and leaves what was staged before in place.
//
// Staging a generation that the VM already holds, or whose commit is in
// progress (a Commit that was cut; the next one finishes it with the
// streams it started with), returns nil without reading the stream. If
// stream is an io.ByteReader, Stage reads exactly the stream's bytes.
//
// The staged stream is kept in the container, not on the source host, so
// that a commit cut by a crash can be finished from it by any process.
func (s *Store) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error {
	if err := checkVM(vm); err != nil {
		return err
	}
	if err := checkDisk(disk); err != nil {
		return err
	}
	if err := s.checkBlobName(vm, disk); err != nil {
		return err
	}
	wrap := func(err error) error {
		return fmt.Errorf("azblob: stage %s/%s generation %d: %w", vm, disk, gen, err)
	}
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	if err := s.ensureContainer(ctx); err != nil {
		return err
	}
	m, _, err := s.readManifest(ctx, vm)
	if err != nil {
		return err
	}
	if m.find(gen) != nil || (m.Applying != nil && m.Applying.Point.Generation == gen) {
		return nil
	}
	if n := m.newest(); n != nil && gen < n.Generation {
		return fmt.Errorf("azblob: stage %s generation %d: %w: the newest point is %d", vm, gen, target.ErrOutOfOrder, n.Generation)
	}

	src, ok := stream.(byteReader)
	if !ok {
		src = bufio.NewReaderSize(stream, 256<<10)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := s.stagedBlob(vm, gen, disk)
	up := newBlockUploader(ctx, s, name, min(s.parallel, 4))
	tee := &stageReader{src: src, up: up}
	h, stats, err := receive(ctx, tee, vm, gen, disk)
	if err == nil {
		err = up.flush()
	}
	if err != nil {
		cancel() // the blocks in flight are of no use
	}
	if werr := up.wait(); err == nil {
		err = werr
	}
	if err != nil {
		return wrap(err)
	}
	md := map[string]*string{
		metaKind:      ptr(kindStaged),
		metaBase:      ptr(strconv.FormatUint(h.Base, 10)),
		metaDiskSize:  ptr(strconv.FormatUint(h.DiskSize, 10)),
		metaBlockSize: ptr(strconv.Itoa(h.BlockSize)),
		metaDataBytes: ptr(strconv.FormatUint(stats.DataBytes, 10)),
	}
	if _, err := up.bb.CommitBlockList(ctx, up.ids, &blockblob.CommitBlockListOptions{Metadata: md}); err != nil {
		return wrap(s.fail("commit block list", name, err))
	}
	s.step("staged")
	return nil
}

// receive decodes the stream from tee and checks that it is the stream of
// vm, gen and disk, and that the disk fits in a page blob.
func receive(ctx context.Context, tee *stageReader, vm string, gen uint64, disk string) (frame.Header, frame.Stats, error) {
	fr, err := frame.NewReader(tee, frame.Limits{})
	if err != nil {
		return frame.Header{}, frame.Stats{}, tee.classify(err)
	}
	h := fr.Header()
	if h.VM != vm || h.Disk != disk || h.Generation != gen {
		return h, frame.Stats{}, fmt.Errorf("%w: the stream is of %s/%s generation %d", target.ErrCorrupt, h.VM, h.Disk, h.Generation)
	}
	if h.DiskSize > maxPageBlob {
		return h, frame.Stats{}, &brokenError{fmt.Sprintf("disk size %d is larger than a page blob can be (%d)", h.DiskSize, int64(maxPageBlob))}
	}
	for n := 0; ; n++ {
		_, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return h, frame.Stats{}, tee.classify(err)
		}
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return h, frame.Stats{}, err
			}
		}
	}
	return h, fr.Stats(), nil
}

type byteReader interface {
	io.Reader
	io.ByteReader
}

// stageReader hands the frame reader what it reads from src and copies it
// to the uploader, remembering whose error ended the stream.
type stageReader struct {
	src  byteReader
	up   *blockUploader
	rerr error // src failed (not at EOF): worth a retry
	werr error // an upload failed
}

func (t *stageReader) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	if n > 0 {
		if werr := t.up.write(p[:n]); werr != nil {
			t.werr = werr
			return 0, werr
		}
	}
	if err != nil && err != io.EOF {
		t.rerr = err
	}
	return n, err
}

func (t *stageReader) ReadByte() (byte, error) {
	var b [1]byte
	if _, err := io.ReadFull(t, b[:]); err != nil {
		return 0, err
	}
	return b[0], nil
}

// classify maps a frame reader error: a failed input or upload is
// retryable (unless the upload's is permanent), a bad stream is ErrCorrupt.
func (t *stageReader) classify(err error) error {
	switch {
	case t.werr != nil:
		return t.werr
	case t.rerr != nil:
		return fmt.Errorf("reading the stream: %w", t.rerr)
	case errors.Is(err, frame.ErrCorrupt), errors.Is(err, frame.ErrTruncated),
		errors.Is(err, frame.ErrVersion), errors.Is(err, frame.ErrLimit):
		return fmt.Errorf("%w: %w", target.ErrCorrupt, err)
	}
	return err
}

// blockUploader cuts what it is given into blocks and stages them, a few
// at a time, each with a Content-MD5 the service checks.
type blockUploader struct {
	ctx   context.Context
	s     *Store
	name  string
	bb    *blockblob.Client
	nonce string
	ids   []string
	buf   []byte
	sem   chan struct{}
	wg    sync.WaitGroup

	mu  sync.Mutex
	err error
}

func newBlockUploader(ctx context.Context, s *Store, name string, parallel int) *blockUploader {
	var n [8]byte
	rand.Read(n[:])
	return &blockUploader{
		ctx: ctx, s: s, name: name, bb: s.cc.NewBlockBlobClient(name),
		nonce: hex.EncodeToString(n[:]), sem: make(chan struct{}, parallel),
	}
}

// blockSize is the size of the next block: small blocks first, bigger ones
// once a stream is long, so that a stream of up to about 1 TiB fits in the
// service's 50,000 blocks.
func (u *blockUploader) blockSize() int {
	if len(u.ids) < stageBlocks1 {
		return stageBlock
	}
	return stageBigSize
}

func (u *blockUploader) write(p []byte) error {
	for len(p) > 0 {
		if err := u.failed(); err != nil {
			return err
		}
		if u.buf == nil {
			u.buf = make([]byte, 0, u.blockSize())
		}
		n := min(len(p), cap(u.buf)-len(u.buf))
		u.buf = append(u.buf, p[:n]...)
		p = p[n:]
		if len(u.buf) == cap(u.buf) {
			if err := u.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush stages the buffered bytes as the next block.
func (u *blockUploader) flush() error {
	if len(u.buf) == 0 {
		return u.failed()
	}
	if len(u.ids) >= maxBlocks {
		return &brokenError{fmt.Sprintf("the stream is longer than a staging blob can hold (%d blocks)", maxBlocks)}
	}
	// Block IDs are all of one length, as the service requires; the nonce
	// keeps them apart from the blocks of an earlier, failed Stage.
	id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%s-%06d", u.nonce, len(u.ids)))
	u.ids = append(u.ids, id)
	buf := u.buf
	u.buf = nil
	select {
	case u.sem <- struct{}{}:
	case <-u.ctx.Done():
		return u.ctx.Err()
	}
	u.wg.Go(func() {
		defer func() { <-u.sem }()
		sum := md5.Sum(buf)
		_, err := u.bb.StageBlock(u.ctx, id, streaming.NopCloser(bytes.NewReader(buf)), &blockblob.StageBlockOptions{
			TransactionalValidation: blob.TransferValidationTypeMD5(sum[:]),
		})
		if err != nil {
			u.mu.Lock()
			if u.err == nil {
				u.err = u.s.fail("stage block", u.name, err)
			}
			u.mu.Unlock()
		}
	})
	return u.failed()
}

func (u *blockUploader) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

// wait waits for the blocks in flight and returns the first error.
func (u *blockUploader) wait() error {
	u.wg.Wait()
	return u.failed()
}
