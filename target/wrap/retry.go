package wrap

import (
	"context"
	"errors"
	"fmt"
	"github.com/drfs-project/drfs/internal/clock"
	"io"
	"time"

	"github.com/drfs-project/drfs/target"
)

// Policy is how Retry retries a failed call: Retries more tries after the
// first, waiting Delay before the first retry and twice as long before
// each next one, up to MaxDelay. This is the short retry inside one call;
// the back-off of a replication that keeps failing (1, 2, 4, 8, 10 minutes,
// then every 30) is the orchestrator's, between rounds.
type Policy struct {
	Retries  int
	Delay    time.Duration
	MaxDelay time.Duration
	// Notify, if set, is called before each wait with the failed
	// operation, the number of the failed try (from 1), its error and the
	// wait.
	Notify func(op string, try int, err error, wait time.Duration)
}

// DefaultPolicy retries three times, after 1, 2 and 4 seconds.
var DefaultPolicy = Policy{Retries: 3, Delay: time.Second, MaxDelay: 4 * time.Second}

// wait returns the wait after failed try n (from 1).
func (p Policy) wait(n int) time.Duration {
	d := p.Delay
	for i := 1; i < n && d < p.MaxDelay; i++ {
		d *= 2
	}
	if p.MaxDelay > 0 {
		d = min(d, p.MaxDelay)
	}
	return d
}

// retryStore retries the calls of a Store.
type retryStore struct {
	target.Store
	p     Policy
	clock clock.Clock
}

// Retry wraps store so that calls failing with a retryable error (see
// target.IsPermanent) are tried again as p says; a permanent error, or a
// cancelled context, returns at once. Every Store method is idempotent, so
// every one is retried. Stage is retried only if its stream can be read
// again: if the store read none of it, or if the stream is an io.Seeker,
// which is sought back to where it started (the shipper's streams are). A
// nil clock is the system clock; a zero Policy is DefaultPolicy. The store
// returned is a target.Checksummer if store is one.
func Retry(store target.Store, p Policy, clk clock.Clock) target.Store {
	if p.Retries == 0 && p.Delay == 0 && p.MaxDelay == 0 {
		p.Retries, p.Delay, p.MaxDelay = DefaultPolicy.Retries, DefaultPolicy.Delay, DefaultPolicy.MaxDelay
	}
	if clk == nil {
		clk = clock.System{}
	}
	r := &retryStore{Store: store, p: p, clock: clk}
	if cs, ok := store.(target.Checksummer); ok {
		return &retryChecksummer{r, cs}
	}
	return r
}

// retryChecksummer is a retryStore of a store that is a target.Checksummer:
// it is one too, its Checksums retried like the other calls.
type retryChecksummer struct {
	*retryStore
	cs target.Checksummer
}

func (r *retryChecksummer) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) (sums []target.Sum, err error) {
	err = r.do(ctx, "checksums", func() (err error) { sums, err = r.cs.Checksums(ctx, vm, gen, disk, chunk, ranges); return err }, nil)
	return sums, err
}

// do calls fn until it succeeds, fails permanently, or the tries run out.
// again, if set, prepares a retry and may refuse it with an error.
func (r *retryStore) do(ctx context.Context, op string, fn func() error, again func() error) error {
	for try := 1; ; try++ {
		err := fn()
		if err == nil || target.IsPermanent(err) || try > r.p.Retries || ctx.Err() != nil {
			return err
		}
		if again != nil {
			if aerr := again(); aerr != nil {
				return err
			}
		}
		wait := r.p.wait(try)
		if r.p.Notify != nil {
			r.p.Notify(op, try, err, wait)
		}
		t := r.clock.NewTimer(wait)
		select {
		case <-t.C():
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up retrying: %v)", err, ctx.Err())
		}
	}
}

func (r *retryStore) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error {
	cr := &countReader{r: stream}
	seeker, _ := stream.(io.Seeker)
	var start int64
	if seeker != nil {
		var err error
		if start, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			seeker = nil
		}
	}
	again := func() error {
		switch {
		case cr.n == 0:
			return nil
		case seeker == nil:
			return errors.New("stream cannot be read again")
		}
		if _, err := seeker.Seek(start, io.SeekStart); err != nil {
			return err
		}
		cr.n = 0
		return nil
	}
	return r.do(ctx, "stage", func() error { return r.Store.Stage(ctx, vm, gen, disk, cr) }, again)
}

func (r *retryStore) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	return r.do(ctx, "commit", func() error { return r.Store.Commit(ctx, vm, gen, c) }, nil)
}

func (r *retryStore) VMs(ctx context.Context) (vms []string, err error) {
	err = r.do(ctx, "vms", func() (err error) { vms, err = r.Store.VMs(ctx); return err }, nil)
	return vms, err
}

func (r *retryStore) Points(ctx context.Context, vm string) (ps []target.Point, err error) {
	err = r.do(ctx, "points", func() (err error) { ps, err = r.Store.Points(ctx, vm); return err }, nil)
	return ps, err
}

func (r *retryStore) Open(ctx context.Context, vm string, gen uint64, disk string) (d target.DiskReader, err error) {
	err = r.do(ctx, "open", func() (err error) { d, err = r.Store.Open(ctx, vm, gen, disk); return err }, nil)
	return d, err
}

func (r *retryStore) Expire(ctx context.Context, vm string, before time.Time, keep int) error {
	return r.do(ctx, "expire", func() error { return r.Store.Expire(ctx, vm, before, keep) }, nil)
}

// countReader counts the bytes read through it. It is an io.Seeker (for
// wrappers above it) that fails when the reader under it is not.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countReader) Seek(off int64, whence int) (int64, error) {
	s, ok := c.r.(io.Seeker)
	if !ok {
		return 0, errors.New("wrap: stream is not seekable")
	}
	return s.Seek(off, whence)
}
