package dirstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/internal/zero"
	"github.com/drfs-project/drfs/target"
)

// Stage receives the stream of one disk of generation gen of vm, decoding
// and verifying it as it arrives (every block checksum, then the trailer),
// and writes each verified block at its disk offset into a new blocks file
// (see staged.go). Once the stream is whole and the blocks file durable, it
// installs the staged record that names the blocks file, replacing an
// earlier one of the same disk: that rename is the moment the disk is
// staged. If stream is an io.ByteReader (a *bufio.Reader), Stage reads
// exactly the stream's bytes from it, up to the trailer; otherwise it may
// read ahead. A stream that fails leaves nothing behind and does not disturb
// what was staged before. Staging a generation the store already holds
// returns nil without reading the stream.
//
// Stage never touches a replica: readers and Checksums of every point see
// nothing of it until Commit.
func (s *Store) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) (err error) {
	if s.readOnly {
		return errReadOnly
	}
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
	packed := s.holds(vm, disk)

	for _, dir := range []string{tmpDir(vm), blocksDir(vm, gen)} {
		if err := s.mkdirAll(dir); err != nil {
			return wrap(err)
		}
	}
	name := randomName(".blocks")
	bp := blocksPath(vm, gen, name)
	f, err := s.root.OpenFile(bp, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		return wrap(err)
	}
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			s.root.Remove(bp)
		}
	}()

	src, ok := stream.(byteReader)
	if !ok {
		src = bufio.NewReaderSize(stream, 256<<10)
	}
	st, err := s.receive(ctx, &inputReader{src: src}, f, vm, gen, disk, packed)
	if err != nil {
		return wrap(err)
	}
	st.blocks = name
	if err := f.Sync(); err != nil {
		return wrap(err)
	}
	err = f.Close()
	f = nil
	if err == nil {
		err = s.syncDir(blocksDir(vm, gen))
	}
	if err != nil {
		return wrap(err)
	}
	s.step("stage received")
	tmp := tmpDir(vm) + "/" + randomName(".stage")
	if err := s.writeSynced("stage", tmp, st.marshal()); err != nil {
		s.root.Remove(tmp)
		return wrap(err)
	}
	s.step("stage record")
	return s.stageInstall(vm, gen, disk, tmp, name)
}

// stageCheck says whether a stream of generation gen is wanted: done if the
// store already holds gen, ErrOutOfOrder if the VM is past it. Unless
// locked, it reads the published points, so that it does not wait for a
// Commit of an older generation (stageInstall checks again under the
// lock).
func (s *Store) stageCheck(vm string, gen uint64, locked bool) (done bool, err error) {
	points, ok := s.state(vm).publishedPoints()
	if locked {
		points, ok = s.state(vm).points, true
	}
	if !ok {
		v, err := s.rlock(vm)
		if err != nil {
			return false, err
		}
		points = v.points
		s.runlock(v)
	}
	if findIn(points, gen) != nil {
		return true, nil
	}
	if n := newestOf(points); n != nil && gen < n.Generation {
		return false, fmt.Errorf("dirstore: stage %s generation %d: %w: the newest point is %d",
			vm, gen, target.ErrOutOfOrder, n.Generation)
	}
	return false, nil
}

// holds reports whether the newest point of vm holds disk: then its stream
// is staged packed, else as an image that Commit links as the replica. A
// guess that a later commit proves wrong costs speed, not correctness:
// Commit applies either layout to any replica. stageCheck loaded vm.
func (s *Store) holds(vm, disk string) bool {
	points, _ := s.state(vm).publishedPoints()
	_, ok := diskSizes(newestOf(points))[disk]
	return ok
}

// stageInstall moves a staged record into place, replacing an earlier one
// of the disk, whose blocks file it then removes. On failure it removes the
// record and the new blocks file.
func (s *Store) stageInstall(vm string, gen uint64, disk, tmp, blocks string) (err error) {
	defer func() {
		if err != nil {
			s.root.Remove(tmp)
			s.root.Remove(blocksPath(vm, gen, blocks))
		}
	}()
	v, err := s.wlock(vm)
	if err != nil {
		return err
	}
	defer s.wunlock(v)
	done, err := s.stageCheck(vm, gen, true)
	if done || err != nil {
		s.root.Remove(tmp)
		s.root.Remove(blocksPath(vm, gen, blocks))
		return err
	}
	dst := stagedPath(vm, gen, disk)
	old, _ := s.readStaged(vm, gen, disk) // a damaged one leaves its blocks file to the next first load
	err = s.mkdirAll(path.Dir(dst))
	if err == nil {
		err = s.root.Rename(tmp, dst)
	}
	if err == nil {
		err = s.syncDir(path.Dir(dst))
	}
	if err != nil {
		if isNameClash(err) {
			return fmt.Errorf("dirstore: stage %s/%s: %w: a disk name is a directory of another: %v", vm, disk, target.ErrBadName, err)
		}
		return fmt.Errorf("dirstore: stage %s/%s generation %d: %w", vm, disk, gen, err)
	}
	s.step("stage installed")
	if old != nil && old.blocks != blocks {
		s.root.Remove(blocksPath(vm, gen, old.blocks))
	}
	return nil
}

// receive decodes the stream from in, checks that it is the stream of vm,
// gen and disk, and writes its blocks into f, packed or as an image. It
// returns the staged record of the stream, without the blocks file's name.
func (s *Store) receive(ctx context.Context, in *inputReader, f *os.File, vm string, gen uint64, disk string, packed bool) (*staged, error) {
	fr, err := frame.NewReader(in, frame.Limits{})
	if err != nil {
		return nil, in.classify(err)
	}
	h := fr.Header()
	if h.VM != vm || h.Disk != disk || h.Generation != gen {
		return nil, fmt.Errorf("%w: the stream is of %s/%s generation %d", target.ErrCorrupt, h.VM, h.Disk, h.Generation)
	}
	if h.DiskSize > math.MaxInt64/2 {
		return nil, fmt.Errorf("%w: disk size %d", target.ErrCorrupt, h.DiskSize)
	}
	st := &staged{gen: gen, base: h.Base, blockSize: int64(h.BlockSize), diskSize: int64(h.DiskSize), packed: packed}
	if !packed {
		if err := s.fault("stage"); err != nil {
			return nil, err
		}
		if err := f.Truncate(st.diskSize); err != nil {
			return nil, err
		}
	}
	w := &blocksWriter{s: s, f: f, st: st}
	for n := 0; ; n++ {
		rec, err := fr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, in.classify(err)
		}
		off := int64(rec.Block) * st.blockSize
		if rec.Kind == frame.KindData {
			err = w.data(off, rec.Data)
		} else if err = w.flush(); err == nil {
			st.add(off, min(off+int64(rec.Count)*st.blockSize, st.diskSize)-off, true)
		}
		if err != nil {
			return nil, err
		}
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
	}
	// The trailer checked the stream. Stage reads nothing after it (a
	// transport may carry more), so a reader left open does not hold it up.
	if err := w.finish(); err != nil {
		return nil, err
	}
	st.dataBytes = int64(fr.Stats().DataBytes)
	return st, nil
}

// blocksRun is the most a blocksWriter gathers into one write.
const blocksRun = 256 << 10

// blocksWriter writes verified data blocks into a blocks file, runs of
// consecutive blocks in one write, at their disk offset or (packed) one
// after the other, and records them in the staged record. A block of zeros
// is not written: it becomes a zero extent, which Commit punches in the
// replica.
type blocksWriter struct {
	s       *Store
	f       *os.File
	st      *staged
	pos     int64  // end of the data written to a packed file
	out     []byte // data gathered for a packed file, to be written at pos
	runOff  int64
	run     []byte
	partial bool  // the step hook heard of the first write
	unsync  int64 // bytes written since writeback was last started
}

// writebackEvery is how many bytes a blocksWriter writes between hints to
// start writeback (startWriteback): the disk works while the stream is
// still arriving, rather than all in the fsync at its end.
const writebackEvery = 32 << 20

func (w *blocksWriter) data(off int64, data []byte) error {
	if len(w.run) > 0 && (w.runOff+int64(len(w.run)) != off || len(w.run)+len(data) > blocksRun) {
		if err := w.flush(); err != nil {
			return err
		}
	}
	if len(w.run) == 0 {
		w.runOff = off
	}
	w.run = append(w.run, data...)
	return nil
}

// flush writes the run's non-zero blocks and records its zero ones.
func (w *blocksWriter) flush() error {
	run, bs := w.run, w.st.blockSize
	for i := int64(0); i < int64(len(run)); {
		zeros := zero.Is(run[i:min(i+bs, int64(len(run)))])
		j := i + bs
		for j < int64(len(run)) && zero.Is(run[j:min(j+bs, int64(len(run)))]) == zeros {
			j += bs
		}
		j = min(j, int64(len(run)))
		if !zeros {
			if err := w.write(run[i:j], w.runOff+i); err != nil {
				return err
			}
		}
		w.st.add(w.runOff+i, j-i, zeros)
		i = j
	}
	w.run = w.run[:0]
	return nil
}

// write writes the data of disk offset off: there in an image, at the end
// in a packed file, where writes gather in out (scattered blocks are
// consecutive in the file).
func (w *blocksWriter) write(b []byte, off int64) error {
	if !w.st.packed {
		return w.writeAt(b, off)
	}
	w.out = append(w.out, b...)
	if len(w.out) < blocksRun {
		return nil
	}
	return w.writeOut()
}

// writeOut writes what a packed file gathered.
func (w *blocksWriter) writeOut() error {
	if len(w.out) == 0 {
		return nil
	}
	err := w.writeAt(w.out, w.pos)
	w.pos += int64(len(w.out))
	w.out = w.out[:0]
	return err
}

func (w *blocksWriter) writeAt(b []byte, at int64) error {
	if err := w.s.fault("stage"); err != nil {
		return err
	}
	if _, err := w.f.WriteAt(b, at); err != nil {
		return err
	}
	if w.unsync += int64(len(b)); w.unsync >= writebackEvery {
		startWriteback(w.f)
		w.unsync = 0
	}
	if !w.partial {
		w.partial = true
		w.s.step("stage partial")
	}
	return nil
}

// finish writes everything still gathered.
func (w *blocksWriter) finish() error {
	if err := w.flush(); err != nil {
		return err
	}
	return w.writeOut()
}

type byteReader interface {
	io.Reader
	io.ByteReader
}

// inputReader hands the frame reader what it reads from src, remembering
// whether src failed (not at EOF): that is worth a retry, not a corrupt
// stream.
type inputReader struct {
	src  byteReader
	rerr error
}

func (in *inputReader) Read(p []byte) (int, error) {
	n, err := in.src.Read(p)
	if err != nil && err != io.EOF {
		in.rerr = err
	}
	return n, err
}

func (in *inputReader) ReadByte() (byte, error) {
	b, err := in.src.ReadByte()
	if err != nil && err != io.EOF {
		in.rerr = err
	}
	return b, err
}

// classify maps a frame reader error: a failed input is retryable, a bad
// stream is ErrCorrupt.
func (in *inputReader) classify(err error) error {
	switch {
	case in.rerr != nil:
		return fmt.Errorf("reading the stream: %w", in.rerr)
	case errors.Is(err, frame.ErrCorrupt), errors.Is(err, frame.ErrTruncated),
		errors.Is(err, frame.ErrVersion), errors.Is(err, frame.ErrLimit):
		return fmt.Errorf("%w: %w", target.ErrCorrupt, err)
	}
	return err
}
