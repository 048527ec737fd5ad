package remote_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/remote"
	"github.com/drfs-project/drfs/target/storetest"
)

// countingReader yields a corrupt stream header, then zeros for ever, and
// counts the reads made after done is set.
type endlessReader struct {
	head  []byte
	done  atomic.Bool
	late  atomic.Int64
	total atomic.Int64
}

func (r *endlessReader) Read(p []byte) (int, error) {
	if r.done.Load() {
		r.late.Add(1)
	}
	n := copy(p, r.head)
	r.head = r.head[n:]
	clear(p[n:])
	r.total.Add(int64(len(p)))
	return len(p), nil
}

// TestEarlyAnswer: the server rejects a stream as soon as it sees it is bad
// and the client stops sending at once, even if the stream never ends; the
// caller's reader is not touched after Stage returns.
func TestEarlyAnswer(t *testing.T) {
	ts := startServer(t)
	c := ts.client(t, ts.pki.ClientA, "")
	r := &endlessReader{head: []byte("NOT A DRFS STREAM")}
	done := make(chan error, 1)
	go func() { done <- c.Stage(ctx, "vm", 1, "d", r) }()
	select {
	case err := <-done:
		r.done.Store(true)
		if !errors.Is(err, target.ErrCorrupt) || !target.IsPermanent(err) {
			t.Fatalf("Stage of a bad stream: %v, want a permanent ErrCorrupt", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("Stage of an endless bad stream did not return; %d bytes read", r.total.Load())
	}
	time.Sleep(50 * time.Millisecond)
	if n := r.late.Load(); n > 0 {
		t.Fatalf("the stream was read %d times after Stage returned", n)
	}
	t.Logf("%d bytes read before the answer", r.total.Load())
}

// faultStore returns err from every method.
type faultStore struct{ err error }

func (s faultStore) Stage(ctx context.Context, vm string, gen uint64, disk string, r io.Reader) error {
	return s.err
}
func (s faultStore) Commit(context.Context, string, uint64, target.Commit) error { return s.err }
func (s faultStore) VMs(context.Context) ([]string, error)                       { return nil, s.err }
func (s faultStore) Points(context.Context, string) ([]target.Point, error)      { return nil, s.err }
func (s faultStore) Open(context.Context, string, uint64, string) (target.DiskReader, error) {
	return nil, s.err
}
func (s faultStore) Expire(context.Context, string, time.Time, int) error { return s.err }

type permanentErr struct{}

func (permanentErr) Error() string   { return "disk chain broken" }
func (permanentErr) Permanent() bool { return true }

type notPermanentErr struct{}

func (notPermanentErr) Error() string   { return "not found, but try again" }
func (notPermanentErr) Permanent() bool { return false }
func (notPermanentErr) Unwrap() error   { return target.ErrNotFound }

// serveStore serves st to every identity.
func serveStore(t testing.TB, open func(string) (target.Store, error), opts ...remote.ServerOptions) (*tlstest.PKI, string, *remote.Server) {
	t.Helper()
	pki := tlstest.New(t)
	var o remote.ServerOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	o.Certificates, o.ClientCAs, o.Open = []tls.Certificate{pki.Server.TLS}, pki.CA.Pool(), open
	if o.Log == nil {
		o.Log = discardLog
	}
	srv, err := remote.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(ctx) })
	return pki, "https://" + ln.Addr().String(), srv
}

func dialPKI(t testing.TB, pki *tlstest.PKI, url string) *remote.Client {
	t.Helper()
	c, err := remote.Dial(url, remote.ClientOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{pki.ClientA.TLS}, RootCAs: pki.CA.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestErrorKinds: every error kind, and permanence, crosses the wire.
func TestErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		err       error
		kind      error
		permanent bool
	}{
		{fmt.Errorf("x: %w", target.ErrNotFound), target.ErrNotFound, true},
		{fmt.Errorf("x: %w", target.ErrCorrupt), target.ErrCorrupt, true},
		{fmt.Errorf("x: %w", target.ErrWrongSource), target.ErrWrongSource, true},
		{fmt.Errorf("x: %w", target.ErrBadName), target.ErrBadName, true},
		{fmt.Errorf("x: %w", target.ErrOutOfOrder), target.ErrOutOfOrder, true},
		{fmt.Errorf("x: %w", target.ErrAuth), target.ErrAuth, true},
		{permanentErr{}, nil, true},
		{notPermanentErr{}, target.ErrNotFound, false},
		{errors.New("disk full"), nil, false},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			pki, url, _ := serveStore(t, func(string) (target.Store, error) { return faultStore{tc.err}, nil })
			c := dialPKI(t, pki, url)
			_, err := c.Points(ctx, "vm")
			for name, err := range map[string]error{
				"Stage":  c.Stage(ctx, "vm", 1, "d", bytes.NewReader(nil)),
				"Commit": c.Commit(ctx, "vm", 1, target.Commit{}),
				"Points": err,
				"Expire": c.Expire(ctx, "vm", time.Now(), 1),
			} {
				var re *remote.Error
				switch {
				case !errors.As(err, &re):
					t.Fatalf("%s: %v (%T), want a *remote.Error", name, err, err)
				case tc.kind != nil && !errors.Is(err, tc.kind):
					t.Fatalf("%s: %v, want %v", name, err, tc.kind)
				case target.IsPermanent(err) != tc.permanent:
					t.Fatalf("%s: %v: permanent %v, want %v", name, err, target.IsPermanent(err), tc.permanent)
				case !bytes.Contains([]byte(err.Error()), []byte(tc.err.Error())):
					t.Fatalf("%s: %q does not carry the store's message %q", name, err, tc.err)
				}
			}
		})
	}
}

// TestOpenFails: a store that fails to open is retried on the next call.
func TestOpenFails(t *testing.T) {
	var calls atomic.Int32
	pki, url, _ := serveStore(t, func(id string) (target.Store, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("store locked by another process")
		}
		return faultStore{fmt.Errorf("%w", target.ErrNotFound)}, nil
	})
	c := dialPKI(t, pki, url)
	_, err := c.Points(ctx, "vm")
	if err == nil || target.IsPermanent(err) {
		t.Fatalf("first call: %v, want a retryable error", err)
	}
	if _, err := c.Points(ctx, "vm"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("second call: %v, want ErrNotFound from the store", err)
	}
}

// TestReaders: a reader the server closed for idleness, or evicted, is
// opened again transparently; Close unpins its point at once.
func TestReaders(t *testing.T) {
	ts := startServer(t, serverConfig{readerIdle: 200 * time.Millisecond, maxReaders: 2})
	c := ts.client(t, ts.pki.ClientA, "")
	rng := rand.New(rand.NewPCG(storetest.Seed(t), 3))
	m, g := storetest.NewVM(rng, "vm", "d")
	if err := g.Apply(ctx, c); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		g := m.Next(uint64(i + 2))
		g.RandomGen(rng, storetest.RandomOptions{Changes: 10})
		if err := g.Apply(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	var readers []target.DiskReader
	for _, p := range m.Points {
		r, err := c.Open(ctx, m.Name, p.Gen, "d")
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		readers = append(readers, r)
	}
	read := func(why string, i int) {
		want := m.Points[i].Disks["d"]
		got := make([]byte, len(want))
		if n, err := readers[i].ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) || !bytes.Equal(got, want) {
			t.Errorf("%s: point %d: ReadAt = %d, %v, equal %v", why, m.Points[i].Gen, n, err, bytes.Equal(got, want))
		}
		if _, err := readers[i].Extents(); err != nil {
			t.Errorf("%s: point %d: Extents: %v", why, m.Points[i].Gen, err)
		}
	}
	// One after the other: each reopening evicts another reader.
	for i := range readers {
		read("4 readers, 2 kept open by the server", i)
	}
	time.Sleep(500 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range readers[:2] {
		wg.Go(func() { read("in parallel, after the server closed them for idleness", i) })
	}
	wg.Wait()

	// Closed readers do not keep their points from expiring.
	for _, r := range readers {
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := readers[0].ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("ReadAt after Close: no error")
	}
	if err := c.Expire(ctx, m.Name, m.Newest().Frozen, 1); err != nil {
		t.Fatal(err)
	}
	m.Points = m.Points[len(m.Points)-1:]
	m.CheckPoints(t, c)
}

// blockingReader returns its first n bytes, then blocks until released,
// then returns the rest.
type blockingReader struct {
	data    []byte
	n       int
	release chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	if r.n == 0 {
		<-r.release
		r.n = -1
	}
	if r.n > 0 {
		p = p[:min(len(p), r.n)]
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	if r.n > 0 {
		r.n -= n
	}
	return n, nil
}

// TestShutdown: Shutdown cuts a call that does not end in time, the call
// fails with a retryable error, stages nothing, and the stores are closed
// (a new server opens the same directory).
func TestShutdown(t *testing.T) {
	ts := startServer(t)
	c := ts.client(t, ts.pki.ClientA, "")
	rng := rand.New(rand.NewPCG(1, 1))
	m, g := storetest.NewVM(rng, "vm", "d")
	if err := g.Apply(ctx, c); err != nil {
		t.Fatal(err)
	}
	g = m.Next(2)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 30})
	if err := g.Build(); err != nil {
		t.Fatal(err)
	}
	s := g.Streams["d"]
	br := &blockingReader{data: s, n: len(s) / 2, release: make(chan struct{})}
	staged := make(chan error, 1)
	go func() { staged <- c.Stage(ctx, m.Name, 2, "d", br) }()
	time.Sleep(200 * time.Millisecond) // the upload is under way
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	ts.shutDown = true
	if err := ts.srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want DeadlineExceeded", err)
	}
	// Stage returns once the stream's Read it is in returns: it never
	// reads the stream after it returned.
	close(br.release)
	if err := <-staged; err == nil || target.IsPermanent(err) {
		t.Fatalf("Stage cut by Shutdown: %v, want a retryable error", err)
	}
	// The directory store was closed: it opens again, at point 1.
	ts2 := startServerOn(t, ts)
	c2 := ts2.client(t, ts.pki.ClientA, "")
	m.CheckPoints(t, c2)
	// Nothing of the cut stream was staged: committing generation 2 now
	// leaves the disk as it was.
	empty := m.Next(2)
	if err := empty.Apply(ctx, c2); err != nil {
		t.Fatal(err)
	}
	m.CheckPoints(t, c2)
}
