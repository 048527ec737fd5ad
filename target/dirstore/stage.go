package dirstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// Stage receives the stream of one disk of generation gen of vm into a
// temporary file, decoding and verifying it as it arrives (every block
// checksum, then the trailer), and moves it into the staging directory once
// it is whole and durable. If stream is an io.ByteReader (a *bufio.Reader),
// Stage reads exactly the stream's bytes from it, up to the trailer;
// otherwise it may read ahead. A stream that fails leaves nothing behind and
// does not disturb what was staged before. Staging a generation the store
// already holds returns nil without reading the stream.
func (s *Store) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) (err error) {
	if err := checkVM(vm); err != nil {
		return err
	}
	if err := checkDisk(disk); err != nil {
		return err
	}
	wrap := func(err error) error {
		return fmt.Errorf("dirstore: stage %s/%s generation %d: %w", vm, disk, gen, err)
	}
	done, err := s.stageCheck(vm, gen, false)
	if done || err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}

	if err := s.mkdirAll(tmpDir(vm)); err != nil {
		return wrap(err)
	}
	tmp := tmpDir(vm) + "/" + randomName(".stage")
	f, err := s.root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return wrap(err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			s.root.Remove(tmp)
		}
	}()

	src, ok := stream.(byteReader)
	if !ok {
		src = bufio.NewReaderSize(stream, 256<<10)
	}
	tee := &stageReader{
		src: src,
		dst: bufio.NewWriterSize(faultWriter{f, func() error { return s.fault("stage") }}, 256<<10),
	}
	if err := s.receive(ctx, tee, vm, gen, disk); err != nil {
		return wrap(err)
	}
	if err := tee.dst.Flush(); err != nil {
		return wrap(err)
	}
	if err := f.Sync(); err != nil {
		return wrap(err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return wrap(err)
	}
	s.step("stage received")
	return s.stageInstall(vm, gen, disk, tmp)
}

// stageCheck says whether a stream of generation gen is wanted: done if the
// store already holds gen, ErrOutOfOrder if the VM is past it.
func (s *Store) stageCheck(vm string, gen uint64, locked bool) (done bool, err error) {
	v := s.state(vm)
	if !locked {
		if v, err = s.rlock(vm); err != nil {
			return false, err
		}
		defer v.mu.RUnlock()
	}
	if v.find(gen) != nil {
		return true, nil
	}
	if n := v.newest(); n != nil && gen < n.Generation {
		return false, fmt.Errorf("dirstore: stage %s generation %d: %w: the newest point is %d",
			vm, gen, target.ErrOutOfOrder, n.Generation)
	}
	return false, nil
}

// stageInstall moves a received stream into place, replacing an earlier one.
func (s *Store) stageInstall(vm string, gen uint64, disk, tmp string) error {
	v, err := s.wlock(vm)
	if err != nil {
		s.root.Remove(tmp)
		return err
	}
	defer v.mu.Unlock()
	done, err := s.stageCheck(vm, gen, true)
	if done || err != nil {
		s.root.Remove(tmp)
		return err
	}
	dst := stagedPath(vm, gen, disk)
	err = s.mkdirAll(path.Dir(dst))
	if err == nil {
		err = s.root.Rename(tmp, dst)
	}
	if err == nil {
		err = s.syncDir(path.Dir(dst))
	}
	if err != nil {
		s.root.Remove(tmp)
		if isNameClash(err) {
			return fmt.Errorf("dirstore: stage %s/%s: %w: a disk name is a directory of another: %v", vm, disk, target.ErrBadName, err)
		}
		return fmt.Errorf("dirstore: stage %s/%s generation %d: %w", vm, disk, gen, err)
	}
	return nil
}

// receive decodes the stream from tee (which copies it to the staging file)
// and checks that it is the stream of vm, gen and disk.
func (s *Store) receive(ctx context.Context, tee *stageReader, vm string, gen uint64, disk string) error {
	fr, err := frame.NewReader(tee, frame.Limits{})
	if err != nil {
		return tee.classify(err)
	}
	h := fr.Header()
	if h.VM != vm || h.Disk != disk || h.Generation != gen {
		return fmt.Errorf("%w: the stream is of %s/%s generation %d", target.ErrCorrupt, h.VM, h.Disk, h.Generation)
	}
	for n := 0; ; n++ {
		_, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return tee.classify(err)
		}
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
	}
	// The trailer checked the stream. Stage reads nothing after it (a
	// transport may carry more), so a reader left open does not hold it up.
	return nil
}

type byteReader interface {
	io.Reader
	io.ByteReader
}

// stageReader hands the frame reader what it reads from src and copies it
// to dst, remembering whose error ended the stream.
type stageReader struct {
	src  byteReader
	dst  *bufio.Writer
	rerr error // src failed (not at EOF): worth a retry
	werr error // dst failed (a full disk): worth a retry
}

func (t *stageReader) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	if n > 0 {
		if _, werr := t.dst.Write(p[:n]); werr != nil {
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

// classify maps a frame reader error: a failed input or staging write is
// retryable, a bad stream is ErrCorrupt.
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
