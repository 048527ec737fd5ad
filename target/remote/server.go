package remote

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/target"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Certificates are the server's certificate chains (usually one).
	Certificates []tls.Certificate
	// ClientCAs verify client certificates. Required: every client must
	// present a certificate that chains to one of them.
	ClientCAs *x509.CertPool

	// Open returns the store of an identity (see Identity); the Server
	// calls it once per identity, on the identity's first request, and
	// keeps the store until Shutdown, which closes it if it is an
	// io.Closer. identity has passed CheckIdentity. A failed Open is
	// retried on the next request.
	Open func(identity string) (target.Store, error)

	// Log receives one line per connection (its identity) and per failed
	// call; slog.Default() if nil.
	Log *slog.Logger

	// StallTimeout bounds how long a connection, or a Stage upload, may
	// make no progress before the server drops it; 60s if 0.
	StallTimeout time.Duration
	// ReaderIdle is how long an open DiskReader may go unused before the
	// server closes it (a client that comes back transparently opens its
	// point again); 10 minutes if 0.
	ReaderIdle time.Duration
	// MaxReaders bounds the open DiskReaders per identity; opening one more
	// closes the least recently used idle one. 64 if 0.
	MaxReaders int
}

// Server serves the stores of ServerOptions.Open over HTTPS with mutual
// TLS 1.3 (see the package documentation). Its methods are safe for
// concurrent use.
type Server struct {
	opts ServerOptions
	log  *slog.Logger
	tls  *tls.Config
	http *http.Server

	mu struct {
		sync.Mutex
		closed  bool
		active  int                    // requests being served
		idle    sync.Cond              // signalled when active drops to 0
		stores  map[string]*storeEntry // by identity
		readers map[string]*serverReader
		janitor bool // the reaper of idle readers runs
	}
	stop        chan struct{} // closed by Shutdown: stops the janitor
	janitorDone chan struct{} // closed when the janitor has stopped
}

// storeEntry is the store of one identity, opened once.
type storeEntry struct {
	ready chan struct{} // closed when st and err are set
	st    target.Store
	err   error
}

// serverReader is an open DiskReader of a client. Its fields other than
// the immutable ones are guarded by Server.mu.
type serverReader struct {
	id, identity string
	r            target.DiskReader

	inflight int       // requests using r
	lastUsed time.Time // when the last one ended
	closing  bool      // close r when inflight drops to 0
}

// NewServer returns a Server. It listens only when Serve or ListenAndServe
// is called.
func NewServer(opts ServerOptions) (*Server, error) {
	switch {
	case len(opts.Certificates) == 0:
		return nil, errors.New("remote: server: no certificate")
	case opts.ClientCAs == nil:
		return nil, errors.New("remote: server: no client CA: every client must present a certificate")
	case opts.Open == nil:
		return nil, errors.New("remote: server: no Open function")
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 60 * time.Second
	}
	if opts.ReaderIdle <= 0 {
		opts.ReaderIdle = 10 * time.Minute
	}
	if opts.MaxReaders <= 0 {
		opts.MaxReaders = 64
	}
	s := &Server{opts: opts, log: opts.Log, stop: make(chan struct{}), janitorDone: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.mu.idle.L = &s.mu.Mutex
	s.mu.stores = map[string]*storeEntry{}
	s.mu.readers = map[string]*serverReader{}

	s.tls = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: opts.Certificates,
		ClientCAs:    opts.ClientCAs,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		NextProtos:   []string{"h2"},
		// Every connection verifies the client's certificate afresh
		// against the current pool; connections are long-lived anyway.
		SessionTicketsDisabled: true,
	}
	base := s.tls.Clone()
	s.tls.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		addr := hello.Conn.RemoteAddr().String()
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no client certificate")
			}
			id := Identity(cs.PeerCertificates[0])
			if err := CheckIdentity(id); err != nil {
				s.log.Warn("remote: connection refused", "addr", addr, "err", err)
				return err
			}
			s.log.Info("remote: connection", "addr", addr, "identity", id)
			if lc, ok := hello.Conn.(*lingerConn); ok {
				lc.accepted.Store(true)
			}
			return nil
		}
		return c, nil
	}

	var protos http.Protocols
	protos.SetHTTP2(true)
	stall := opts.StallTimeout
	s.http = &http.Server{
		Handler:   s.routes(),
		TLSConfig: s.tls,
		Protocols: &protos,
		// Bounds the TLS handshake too.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:  stall / 2,
			PingTimeout:      stall / 2,
			WriteByteTimeout: stall,
			// Enough in flight for a WAN link (the maximum net/http allows).
			MaxReceiveBufferPerStream:     4<<20 - 1,
			MaxReceiveBufferPerConnection: 4<<20 - 1,
			// DATA frames of up to 256 KiB rather than 16 KiB: fewer frames,
			// and each one fills whole TLS records.
			MaxReadFrameSize: 256 << 10,
		},
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s, nil
}

// ListenAndServe listens on the TCP address addr and serves; see Serve.
func (s *Server) ListenAndServe(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.Serve(ln)
}

// Serve accepts TLS connections on ln (a plain TCP listener: Serve does
// the TLS) until Shutdown, when it returns nil. It closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	if !s.mu.janitor {
		s.mu.janitor = true
		go s.janitor()
	}
	s.mu.Unlock()
	err := s.http.ServeTLS(&lingerListener{ln}, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops listening, waits for the calls in progress to end (or ctx
// to expire, when it cuts them), then closes open readers and every store
// that is an io.Closer. It returns ctx's error if calls had to be cut, or
// the first error closing a store.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	close(s.stop)
	janitor := s.mu.janitor
	s.mu.Unlock()

	err := s.http.Shutdown(ctx)
	if err != nil {
		s.http.Close()
	}
	s.mu.Lock()
	for s.mu.active > 0 {
		s.mu.idle.Wait()
	}
	s.mu.Unlock()
	if janitor {
		<-s.janitorDone
	}

	s.mu.Lock()
	readers := s.mu.readers
	stores := s.mu.stores
	s.mu.readers, s.mu.stores = map[string]*serverReader{}, map[string]*storeEntry{}
	s.mu.Unlock()
	for _, r := range readers {
		r.r.Close()
	}
	for id, e := range stores {
		<-e.ready
		if c, ok := e.st.(io.Closer); ok && e.err == nil {
			if cerr := c.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("remote: closing the store of %s: %w", id, cerr)
			}
		}
	}
	return err
}

// store returns the store of identity id, opening it on first use.
func (s *Server) store(id string) (target.Store, error) {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil, errShutdown
	}
	e := s.mu.stores[id]
	if e == nil {
		e = &storeEntry{ready: make(chan struct{})}
		s.mu.stores[id] = e
		s.mu.Unlock()
		e.st, e.err = s.opts.Open(id)
		if e.err == nil && e.st == nil {
			e.err = errors.New("Open returned no store")
		}
		if e.err != nil {
			e.err = fmt.Errorf("remote: opening the store of %s: %w", id, e.err)
			s.mu.Lock()
			delete(s.mu.stores, id)
			s.mu.Unlock()
		}
		close(e.ready)
	} else {
		s.mu.Unlock()
	}
	<-e.ready
	return e.st, e.err
}

var errShutdown = errors.New("remote: server shutting down")

// call is one request: the caller's identity and store.
type call struct {
	id string
	st target.Store
	w  http.ResponseWriter
	r  *http.Request
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	for pattern, fn := range map[string]func(*call) error{
		"PUT " + pathStage:                     s.stage,
		"POST " + pathCommit:                   s.commit,
		"GET " + pathVMs:                       s.vms,
		"GET " + pathPoints:                    s.points,
		"POST " + pathExpire:                   s.expire,
		"POST " + pathReaders:                  s.openReader,
		"GET " + pathReaders + "/{id}":         s.readAt,
		"GET " + pathReaders + "/{id}/extents": s.extents,
		"DELETE " + pathReaders + "/{id}":      s.closeReader,
		"POST " + pathSums:                     s.sums,
	} {
		mux.Handle(pattern, s.handle(fn))
	}
	return mux
}

// handle authenticates a request, finds the caller's store and maps the
// error fn returns to an error answer.
func (s *Server) handle(fn func(*call) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &call{w: w, r: r}
		if !s.begin() {
			s.fail(c, errShutdown)
			return
		}
		defer s.end()
		err := s.authenticate(c)
		if err == nil {
			c.st, err = s.store(c.id)
		}
		if err == nil {
			err = fn(c)
		}
		if err != nil {
			s.fail(c, err)
		}
	})
}

// begin counts a request in, unless the server is shutting down.
func (s *Server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return false
	}
	s.mu.active++
	return true
}

func (s *Server) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.active--; s.mu.active == 0 {
		s.mu.idle.Broadcast()
	}
}

func (s *Server) authenticate(c *call) error {
	if c.r.TLS == nil || len(c.r.TLS.PeerCertificates) == 0 {
		return fmt.Errorf("remote: %w: no client certificate", target.ErrAuth)
	}
	c.id = Identity(c.r.TLS.PeerCertificates[0])
	if err := CheckIdentity(c.id); err != nil {
		return fmt.Errorf("remote: %w: %v", target.ErrAuth, err)
	}
	return nil
}

// fail sends the error answer of err.
func (s *Server) fail(c *call, err error) {
	status, body := toWire(err)
	var kind errKind
	if errors.As(err, &kind) {
		status, body.Kind, body.Permanent = kind.status, kind.kind, kind.permanent
	}
	level := slog.LevelInfo // the caller's fault
	switch {
	case body.Kind == "not_found" || body.Kind == kindReaderGone:
		level = slog.LevelDebug // an answer more than a failure
	case !body.Permanent:
		level = slog.LevelWarn
	}
	if c.r.Context().Err() != nil {
		level = slog.LevelDebug // the client went away
	}
	s.log.Log(c.r.Context(), level, "remote: call failed", "identity", c.id, "call", c.r.Method+" "+c.r.URL.Path, "err", err)
	writeJSON(c.w, status, body)
}

// errKind is an error the server makes itself with a wire kind of its own.
type errKind struct {
	kind      string
	status    int
	permanent bool
	msg       string
}

func (e errKind) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return errKind{status: http.StatusBadRequest, permanent: true, msg: "remote: " + fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"encoding the answer failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func readJSON(c *call, v any) error {
	if err := json.NewDecoder(http.MaxBytesReader(c.w, c.r.Body, maxJSON)).Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

// gen parses the gen query parameter.
func gen(c *call) (uint64, error) {
	s := c.r.URL.Query().Get("gen")
	g, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, badRequest("generation %q is not a number", s)
	}
	return g, nil
}

func (s *Server) stage(c *call) error {
	q := c.r.URL.Query()
	g, err := gen(c)
	if err != nil {
		return err
	}
	body := &stallReader{r: c.r.Body, rc: http.NewResponseController(c.w), stall: s.opts.StallTimeout}
	if err := c.st.Stage(c.r.Context(), q.Get("vm"), g, q.Get("disk"), body); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// stallReader reads a request body with a deadline for each read: a client
// that stops sending in the middle of a stream fails its Stage.
type stallReader struct {
	r     io.Reader
	rc    *http.ResponseController
	stall time.Duration
}

func (r *stallReader) Read(p []byte) (int, error) {
	r.rc.SetReadDeadline(time.Now().Add(r.stall))
	return r.r.Read(p)
}

func (s *Server) commit(c *call) error {
	g, err := gen(c)
	if err != nil {
		return err
	}
	var req commitRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	err = c.st.Commit(c.r.Context(), c.r.URL.Query().Get("vm"), g, target.Commit{
		Source:        req.Source,
		Frozen:        req.Frozen,
		Kind:          req.Kind,
		Disks:         req.Disks,
		AppConsistent: req.AppConsistent,
	})
	if err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) vms(c *call) error {
	vms, err := c.st.VMs(c.r.Context())
	if err != nil {
		return err
	}
	if vms == nil {
		vms = []string{}
	}
	writeJSON(c.w, http.StatusOK, vmsResponse{VMs: vms})
	return nil
}

func (s *Server) points(c *call) error {
	pts, err := c.st.Points(c.r.Context(), c.r.URL.Query().Get("vm"))
	if err != nil {
		return err
	}
	writeJSON(c.w, http.StatusOK, pointsResponse{Points: pts})
	return nil
}

func (s *Server) expire(c *call) error {
	var req expireRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	if err := c.st.Expire(c.r.Context(), c.r.URL.Query().Get("vm"), req.Before, req.Keep); err != nil {
		return err
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) openReader(c *call) error {
	q := c.r.URL.Query()
	g, err := gen(c)
	if err != nil {
		return err
	}
	r, err := c.st.Open(c.r.Context(), q.Get("vm"), g, q.Get("disk"))
	if err != nil {
		return err
	}
	var b [16]byte
	rand.Read(b[:])
	sr := &serverReader{id: hex.EncodeToString(b[:]), identity: c.id, r: r, lastUsed: time.Now()}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		r.Close()
		return errShutdown
	}
	s.mu.readers[sr.id] = sr
	evicted := s.evictLocked(c.id)
	s.mu.Unlock()
	for _, r := range evicted {
		r.r.Close()
	}
	writeJSON(c.w, http.StatusCreated, openResponse{ID: sr.id, Size: r.Size()})
	return nil
}

// evictLocked forgets the least recently used idle readers of identity id
// beyond MaxReaders and returns them, to be closed.
func (s *Server) evictLocked(id string) (evicted []*serverReader) {
	for {
		n := 0
		var lru *serverReader
		for _, r := range s.mu.readers {
			if r.identity != id || r.closing {
				continue
			}
			n++
			if r.inflight == 0 && (lru == nil || r.lastUsed.Before(lru.lastUsed)) {
				lru = r
			}
		}
		if n <= s.opts.MaxReaders || lru == nil {
			return evicted
		}
		s.closeReaderLocked(lru)
		evicted = append(evicted, lru)
	}
}

// closeReaderLocked forgets r. It returns true if the caller must close r
// (after unlocking s.mu: a store's Close may take time); otherwise the last
// request using r closes it.
func (s *Server) closeReaderLocked(r *serverReader) bool {
	delete(s.mu.readers, r.id)
	r.closing = true
	return r.inflight == 0
}

// acquire returns the caller's reader named in the path, marked in use;
// release it when done.
func (s *Server) acquire(c *call) (*serverReader, error) {
	id := c.r.PathValue("id")
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.mu.readers[id]
	if r == nil || r.identity != c.id {
		return nil, errKind{kind: kindReaderGone, status: http.StatusGone, permanent: false,
			msg: fmt.Sprintf("remote: reader %.32s is not open", id)}
	}
	r.inflight++
	return r, nil
}

func (s *Server) release(r *serverReader) {
	s.mu.Lock()
	r.inflight--
	r.lastUsed = time.Now()
	last := r.closing && r.inflight == 0
	s.mu.Unlock()
	if last {
		r.r.Close()
	}
}

// readBufs holds maxRead-byte buffers for reads.
var readBufs = sync.Pool{New: func() any { b := make([]byte, maxRead); return &b }}

func (s *Server) readAt(c *call) error {
	q := c.r.URL.Query()
	off, err1 := strconv.ParseInt(q.Get("off"), 10, 64)
	n, err2 := strconv.Atoi(q.Get("len"))
	if err1 != nil || err2 != nil || off < 0 || n < 0 || n > maxRead {
		return badRequest("read range off=%q len=%q: want 0 <= off and 0 <= len <= %d", q.Get("off"), q.Get("len"), maxRead)
	}
	r, err := s.acquire(c)
	if err != nil {
		return err
	}
	defer s.release(r)
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	got, err := r.r.ReadAt((*bp)[:n], off)
	if err != nil && err != io.EOF {
		return err
	}
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.Header().Set("Content-Length", strconv.Itoa(got))
	c.w.WriteHeader(http.StatusOK)
	c.w.Write((*bp)[:got])
	return nil
}

func (s *Server) extents(c *call) error {
	r, err := s.acquire(c)
	if err != nil {
		return err
	}
	defer s.release(r)
	exts, err := r.r.Extents()
	if err != nil {
		return err
	}
	resp := extentsResponse{Extents: make([][2]int64, len(exts))}
	for i, e := range exts {
		resp.Extents[i] = [2]int64{e.Off, e.Len}
	}
	writeJSON(c.w, http.StatusOK, resp)
	return nil
}

// sums answers a checksum request: the store computes the sums where the
// replica lives (target.Checksummer), or the server does from a DiskReader
// of the point; either way only the sums go back.
func (s *Server) sums(c *call) error {
	q := c.r.URL.Query()
	g, err := gen(c)
	if err != nil {
		return err
	}
	chunk, err := strconv.ParseInt(q.Get("chunk"), 10, 64)
	if err != nil {
		return badRequest("chunk size %q is not a number", q.Get("chunk"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.w, c.r.Body, maxSumsBody))
	if err != nil {
		return badRequest("request body: %v", err)
	}
	if len(body)%rangeBytes != 0 {
		return badRequest("request body of %d bytes is not whole ranges of %d", len(body), rangeBytes)
	}
	ranges := make([]target.Extent, len(body)/rangeBytes)
	for i := range ranges {
		off := binary.BigEndian.Uint64(body[i*rangeBytes:])
		n := binary.BigEndian.Uint64(body[i*rangeBytes+8:])
		if off > math.MaxInt64 || n > math.MaxInt64 {
			return badRequest("range %d: offset %d, length %d", i, off, n)
		}
		ranges[i] = target.Extent{Off: int64(off), Len: int64(n)}
	}
	vm, disk := q.Get("vm"), q.Get("disk")
	var sums []target.Sum
	if cs, ok := c.st.(target.Checksummer); ok {
		sums, err = cs.Checksums(c.r.Context(), vm, g, disk, chunk, ranges)
	} else {
		sums, err = readerSums(c.r.Context(), c.st, vm, g, disk, chunk, ranges)
	}
	if err != nil {
		return err
	}
	out := make([]byte, 0, len(sums)*(1+len(target.Sum{})))
	for _, sum := range sums {
		if sum == target.ZeroSum {
			out = append(out, sumZero)
		} else {
			out = append(out, sumData)
			out = append(out, sum[:]...)
		}
	}
	c.w.Header().Set("Content-Type", "application/octet-stream")
	c.w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	c.w.WriteHeader(http.StatusOK)
	c.w.Write(out)
	return nil
}

// readerSums computes sums for a store without target.Checksummer, from a
// DiskReader of the point.
func readerSums(ctx context.Context, st target.Store, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if err := chunksum.CheckRequest(chunk, ranges); err != nil {
		return nil, err
	}
	r, err := st.Open(ctx, vm, gen, disk)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sums, _, err := chunksum.OfReader(ctx, r, chunk, ranges)
	return sums, err
}

func (s *Server) closeReader(c *call) error {
	id := c.r.PathValue("id")
	s.mu.Lock()
	r := s.mu.readers[id]
	now := r != nil && r.identity == c.id && s.closeReaderLocked(r)
	s.mu.Unlock()
	if now {
		// Before the answer: the point is unpinned when Close returns.
		if err := r.r.Close(); err != nil {
			return err
		}
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

// janitor closes readers left idle for ReaderIdle, so that a client that
// vanished does not pin recovery points for ever.
func (s *Server) janitor() {
	defer close(s.janitorDone)
	t := time.NewTicker(max(s.opts.ReaderIdle/4, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			var idle []*serverReader
			s.mu.Lock()
			for _, r := range s.mu.readers {
				if r.inflight == 0 && now.Sub(r.lastUsed) > s.opts.ReaderIdle {
					s.closeReaderLocked(r)
					idle = append(idle, r)
				}
			}
			s.mu.Unlock()
			for _, r := range idle {
				r.r.Close()
			}
		}
	}
}

// lingerListener makes Close of a connection whose client was not accepted
// a lingering close: FIN, then read and discard what the client still
// sends for a moment before closing the socket. In TLS 1.3 a client learns
// that its certificate was refused only after its handshake has finished,
// while it is already sending its request; an immediate close would answer
// that request with a TCP reset, which can destroy the alert saying why
// before the client reads it.
//
// Shutdown does not wait for lingering connections: each ends within
// lingerTime on its own.
type lingerListener struct{ net.Listener }

func (l *lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return &lingerConn{TCPConn: tc, r: bufio.NewReaderSize(tc, recordBuffer)}, nil
	}
	return c, nil
}

// Lingering bounds.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

type lingerConn struct {
	*net.TCPConn
	r        *bufio.Reader // reads ahead: TLS reads about a record at a time (conn.go)
	accepted atomic.Bool   // the TLS handshake accepted the client
	once     sync.Once
}

func (c *lingerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *lingerConn) Close() error {
	if c.accepted.Load() {
		return c.TCPConn.Close()
	}
	c.once.Do(func() {
		if c.TCPConn.CloseWrite() != nil {
			c.TCPConn.Close()
			return
		}
		go func() {
			c.TCPConn.SetReadDeadline(time.Now().Add(lingerTime))
			io.Copy(io.Discard, io.LimitReader(c.TCPConn, lingerBytes))
			c.TCPConn.Close()
		}()
	})
	return nil
}
