package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/tracker"
)

// Why a stream's reader was closed under its encoder. The encoder gives up
// the disk quietly for the first two and stops the generation for the last.
var (
	errStageReturned = errors.New("shipper: the store finished with the stream")
	errRewound       = errors.New("shipper: the stream was rewound")
	errStageFailed   = errors.New("shipper: staging the stream failed")
	errStopRead      = errors.New("shipper: disk read")
)

// attempt is one encoding of a disk's stream into a pipe.
type attempt struct {
	p    *pipe
	once sync.Once
	done chan struct{} // closed by finish

	stats frame.Stats // set before done is closed
	err   error       // nil: the whole stream went into the pipe
}

func newAttempt() *attempt {
	return &attempt{p: newPipe(pipeSize), done: make(chan struct{})}
}

// finish ends the encoding: the reader sees EOF after the stream, or err.
func (a *attempt) finish(stats frame.Stats, err error) {
	a.once.Do(func() {
		a.stats, a.err = stats, err
		a.p.closeWrite(err)
		close(a.done)
	})
}

// consumerGone reports whether err says the reading side closed the pipe
// on purpose, so the encoder should give up this disk without failing.
func consumerGone(err error) bool {
	return errors.Is(err, errStageReturned) || errors.Is(err, errRewound)
}

// stream is the frame stream of one disk as Stage reads it. It is an
// io.ReadSeeker that can seek only back to its start: that re-encodes the
// disk from a fresh read of the generation, so a retried Stage gets the
// whole stream again (see Retry).
type stream struct {
	g    *genShip
	plan *diskPlan

	mu   sync.Mutex
	cur  *attempt
	read int64 // bytes read from cur
}

func (s *stream) Read(p []byte) (int, error) {
	s.mu.Lock()
	a := s.cur
	s.mu.Unlock()
	n, err := a.p.Read(p)
	s.mu.Lock()
	if s.cur == a {
		s.read += int64(n)
	}
	s.mu.Unlock()
	return n, err
}

// Seek supports Seek(0, io.SeekCurrent), which returns how much was read,
// and Seek(0, io.SeekStart), which starts the stream over.
func (s *stream) Seek(offset int64, whence int) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case offset == 0 && whence == io.SeekCurrent:
		return s.read, nil
	case offset == 0 && whence == io.SeekStart:
		if s.read == 0 {
			return 0, nil
		}
		s.cur.p.closeRead(errRewound)
		s.cur = s.g.reencode(s.plan)
		s.read = 0
		return 0, nil
	}
	return 0, fmt.Errorf("shipper: stream of %s can only seek back to its start", s.plan.name)
}

// end is called once Stage returned stageErr: it closes the reading side
// and waits for the encoder, and returns what the encoding that Stage read
// last made of the stream.
func (s *stream) end(stageErr error) (frame.Stats, error) {
	s.mu.Lock()
	a := s.cur
	s.mu.Unlock()
	if stageErr != nil {
		a.p.closeRead(errStageFailed)
	} else {
		a.p.closeRead(errStageReturned)
	}
	<-a.done
	return a.stats, a.err
}

// genShip encodes the changed disks of one generation.
type genShip struct {
	src  Source
	vm   string
	gen  uint64
	info *Generation

	plans map[string]*diskPlan // the disks to stage
	raw   bool                 // send blocks uncompressed (Options.NoCompression)

	side sync.WaitGroup // re-encodings started by rewinds
}

// run reads the generation once and sends each changed disk's stream on
// streams as it starts, writing its frames while the receiver stages it.
// It closes streams when done. A receiver that stops taking streams
// cancels ctx.
func (g *genShip) run(ctx context.Context, streams chan<- *stream) error {
	defer close(streams)
	type current struct {
		a    *attempt
		enc  *diskEncoder
		skip bool // the receiver is done with this disk: pass over its records
	}
	var cur *current
	err := g.src.ReadGeneration(g.vm, g.gen, func(r tracker.Record) error {
		terminal := r.Kind == tracker.KindSize || r.Kind == tracker.KindRemoved
		if cur != nil && r.Disk != cur.enc.disk {
			return permanent(fmt.Errorf("the records of disk %s end without its size", cur.enc.disk))
		}
		if cur == nil {
			if r.Kind == tracker.KindRemoved {
				return nil // the plan knows
			}
			p := g.plans[r.Disk]
			if p == nil {
				return permanent(fmt.Errorf("records of disk %s, which the description of the generation does not list", r.Disk))
			}
			a := newAttempt()
			enc, err := newDiskEncoder(a.p, g.vm, g.gen, g.info, p, g.raw)
			if err != nil {
				return err
			}
			select {
			case streams <- &stream{g: g, plan: p, cur: a}:
			case <-ctx.Done():
				return ctx.Err()
			}
			cur = &current{a: a, enc: enc}
		}
		if !cur.skip {
			done, err := cur.enc.add(r)
			switch {
			case err != nil && consumerGone(err):
				cur.a.finish(cur.enc.stats(), err)
				cur.skip = true
			case err != nil:
				cur.a.finish(cur.enc.stats(), err)
				cur = nil
				return err
			case done:
				cur.a.finish(cur.enc.stats(), nil)
			}
		}
		if terminal {
			cur = nil
		}
		return nil
	})
	if cur != nil {
		if err == nil {
			err = permanent(fmt.Errorf("the records of disk %s end without its size", cur.enc.disk))
		}
		cur.a.finish(cur.enc.stats(), err)
	}
	return err
}

// reencode starts a new encoding of one disk's stream from a fresh read of
// the generation, for a Stage that is retried.
func (g *genShip) reencode(p *diskPlan) *attempt {
	a := newAttempt()
	g.side.Add(1)
	go func() {
		defer g.side.Done()
		enc, err := newDiskEncoder(a.p, g.vm, g.gen, g.info, p, g.raw)
		if err != nil {
			a.finish(frame.Stats{}, err)
			return
		}
		err = g.src.ReadGeneration(g.vm, g.gen, func(r tracker.Record) error {
			if r.Disk != p.name || r.Kind == tracker.KindRemoved {
				return nil
			}
			done, err := enc.add(r)
			if err == nil && done {
				err = errStopRead
			}
			return err
		})
		switch {
		case errors.Is(err, errStopRead):
			err = nil
		case err == nil:
			err = permanent(fmt.Errorf("the records of disk %s end without its size", p.name))
		}
		a.finish(enc.stats(), err)
	}()
	return a
}

// pipeSize is how much of a stream the encoder may run ahead of Stage: the
// log read and encoding of the next megabytes overlap the transfer (and the
// disk reads of the log the sending), where an unbuffered pipe made them
// take turns.
const pipeSize = 4 << 20

// pipe is an io.Pipe with a buffer: Write returns once its bytes are in the
// buffer, waiting only while it is full. The encoder writes, Stage reads.
type pipe struct {
	mu   sync.Mutex
	cond sync.Cond
	buf  []byte // ring buffer
	r, n int    // read position and bytes buffered
	werr error  // set by closeWrite: Read returns it (io.EOF for nil) once the buffer is empty
	rerr error  // set by closeRead: Write returns it, the buffer is dropped
}

func newPipe(size int) *pipe {
	p := &pipe{buf: make([]byte, size)}
	p.cond.L = &p.mu
	return p
}

// Write copies b into the buffer, waiting for room. It fails with the
// reader's error once the reader closed.
func (p *pipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	written := 0
	for len(b) > 0 {
		for p.rerr == nil && p.werr == nil && p.n == len(p.buf) {
			p.cond.Wait()
		}
		switch {
		case p.rerr != nil:
			return written, p.rerr
		case p.werr != nil:
			return written, io.ErrClosedPipe
		}
		w := (p.r + p.n) % len(p.buf)
		m := copy(p.buf[w:min(len(p.buf), w+len(p.buf)-p.n)], b)
		p.n += m
		written += m
		b = b[m:]
		p.cond.Broadcast()
	}
	return written, nil
}

// Read copies buffered bytes into b, waiting for some.
func (p *pipe) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.n == 0 && p.werr == nil && p.rerr == nil {
		p.cond.Wait()
	}
	switch {
	case p.rerr != nil:
		return 0, io.ErrClosedPipe
	case p.n == 0 && p.werr == errPipeEOF:
		return 0, io.EOF
	case p.n == 0:
		return 0, p.werr
	}
	m := copy(b, p.buf[p.r:min(len(p.buf), p.r+p.n)])
	p.r = (p.r + m) % len(p.buf)
	p.n -= m
	p.cond.Broadcast()
	return m, nil
}

// errPipeEOF marks a writer that closed without an error.
var errPipeEOF = errors.New("shipper: pipe closed")

// closeWrite ends the stream: the reader gets the buffered bytes, then
// io.EOF (err nil) or err. The first close counts.
func (p *pipe) closeWrite(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		err = errPipeEOF
	}
	if p.werr == nil {
		p.werr = err
	}
	p.cond.Broadcast()
}

// closeRead stops the reading side: the writer's Writes fail with err from
// now on, and what is buffered is dropped. The first close counts.
func (p *pipe) closeRead(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rerr == nil {
		p.rerr = err
		p.n = 0
	}
	p.cond.Broadcast()
}
