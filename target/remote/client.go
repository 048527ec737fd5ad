package remote

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/target"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// CertFile and KeyFile hold the client certificate (PEM) that the
	// server knows this source host by; CAFile the CA certificates (PEM)
	// that sign the server's certificate.
	CertFile, KeyFile, CAFile string
	// TLS, if set, is used instead of the files: it must hold the client
	// certificate (Certificates or GetClientCertificate) and RootCAs. It is
	// cloned, and its MinVersion raised to TLS 1.3.
	TLS *tls.Config

	// ConnectTimeout bounds the TCP connect and the TLS handshake; 10s if 0.
	ConnectTimeout time.Duration
	// StallTimeout is how long a connection may make no progress (no
	// answer to a PING, no byte written) before the client drops it and
	// the calls on it fail with a retryable error; 30s if 0. It does not
	// limit a slow call on a live connection: use the context for that.
	StallTimeout time.Duration
}

// Client is a target.Store served by a Server. It is safe for concurrent
// use; all calls share one HTTP/2 connection, made on first use and made
// again after a failure.
type Client struct {
	base     *url.URL
	hc       *http.Client
	tr       *http.Transport
	identity string
	connect  time.Duration
	stall    time.Duration
}

var (
	_ target.Store       = (*Client)(nil)
	_ target.Checksummer = (*Client)(nil)
	_ target.DiskReader  = (*diskReader)(nil)
)

// Dial returns a Client for the server at rawURL ("https://host:port",
// optionally with a path prefix). It reads and checks the certificates but
// does not connect: the first call does, so an agent can start while the
// target is down.
func Dial(rawURL string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("remote: target URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("remote: target URL %q: want https://host:port", rawURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawPath = ""

	cfg, err := clientTLS(opts)
	if err != nil {
		return nil, err
	}
	c := &Client{base: u, stall: opts.StallTimeout}
	if len(cfg.Certificates) > 0 {
		leaf := cfg.Certificates[0].Leaf
		if leaf == nil && len(cfg.Certificates[0].Certificate) > 0 {
			leaf, _ = x509.ParseCertificate(cfg.Certificates[0].Certificate[0])
		}
		if leaf != nil {
			c.identity = Identity(leaf)
			if err := CheckIdentity(c.identity); err != nil {
				return nil, fmt.Errorf("remote: client certificate: %w", err)
			}
		}
	}
	c.connect = opts.ConnectTimeout
	if c.connect <= 0 {
		c.connect = 10 * time.Second
	}
	connect := c.connect
	if c.stall <= 0 {
		c.stall = 30 * time.Second
	}
	var protos http.Protocols
	protos.SetHTTP2(true)
	c.tr = &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialBuffered(&net.Dialer{Timeout: connect, KeepAlive: 15 * time.Second}),
		TLSClientConfig:     cfg,
		TLSHandshakeTimeout: connect,
		Protocols:           &protos,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:               c.stall / 2,
			PingTimeout:                   c.stall / 2,
			WriteByteTimeout:              c.stall,
			MaxReceiveBufferPerStream:     4<<20 - 1,
			MaxReceiveBufferPerConnection: 4<<20 - 1,
			// DATA frames of up to 256 KiB rather than 16 KiB: fewer frames,
			// and each one fills whole TLS records.
			MaxReadFrameSize: 256 << 10,
		},
		IdleConnTimeout:        90 * time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c, nil
}

// dialBuffered dials with d and puts the connection in the wrappers of
// conn.go: fewer system calls per byte under the TLS layer.
func dialBuffered(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newCoalescingConn(newBufferedConn(c)), nil
	}
}

func clientTLS(opts ClientOptions) (*tls.Config, error) {
	if opts.TLS != nil {
		cfg := opts.TLS.Clone()
		cfg.MinVersion = max(cfg.MinVersion, tls.VersionTLS13)
		if len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil {
			return nil, errors.New("remote: TLS config without a client certificate")
		}
		return cfg, nil
	}
	switch {
	case opts.CertFile == "" || opts.KeyFile == "":
		return nil, errors.New("remote: no client certificate and key")
	case opts.CAFile == "":
		return nil, errors.New("remote: no CA file for the server's certificate")
	}
	cert, err := LoadCertificate(opts.CertFile, opts.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("remote: client %w", err)
	}
	pool, err := LoadCertPool(opts.CAFile)
	if err != nil {
		return nil, fmt.Errorf("remote: server %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, RootCAs: pool}, nil
}

// Identity returns the identity of the client certificate ("" if it is
// only known to a GetClientCertificate callback).
func (c *Client) Identity() string { return c.identity }

// Close closes the client's idle connections. Calls in progress go on; the
// next call connects again.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}

// request is one call to the server.
type request struct {
	op     string // for errors: "stage", "commit", ...
	method string
	path   string
	query  url.Values
	body   io.Reader
	json   bool // body is JSON
}

// do sends req and returns the answer if it is a success; otherwise an
// error: an *Error for an error answer or a TLS refusal, else a wrapped
// network or context error (retryable).
func (c *Client) do(ctx context.Context, req request) (*http.Response, error) {
	u := *c.base
	u.Path += req.path
	u.RawQuery = req.query.Encode()
	hr, err := http.NewRequestWithContext(ctx, req.method, u.String(), req.body)
	if err != nil {
		return nil, fmt.Errorf("remote: %s: %w", req.op, err)
	}
	if req.json {
		hr.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(hr)
	if err != nil {
		if isAuthError(err) {
			return nil, c.authError(req.op, unwrapURL(err))
		}
		if cerr := ctx.Err(); cerr != nil {
			return nil, fmt.Errorf("remote: %s %s: %w", req.op, c.base.Host, cerr)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			// A refusal closes the connection; it does not stall it.
		} else if aerr := c.refused(ctx); aerr != nil {
			return nil, c.authError(req.op, aerr)
		}
		return nil, fmt.Errorf("remote: %s %s: %w", req.op, c.base.Host, unwrapURL(err))
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp, nil
	}
	defer resp.Body.Close()
	var body *errorResponse
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt == "application/json" {
		var e errorResponse
		if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e) == nil && e.Message != "" {
			body = &e
		}
	}
	return nil, fromWire(req.op, resp.StatusCode, body)
}

func (c *Client) authError(op string, err error) *Error {
	msg := fmt.Sprintf("TLS with %s: %v", c.base.Host, err)
	if why := explainTLS(err); why != "" {
		msg = fmt.Sprintf("TLS with %s: %s (%v)", c.base.Host, why, err)
	}
	return &Error{Op: op, Kind: target.ErrAuth, permanent: true, Message: msg}
}

// refused returns the TLS alert or verification error if the server
// refuses this client, else nil. In TLS 1.3 the server judges the client's
// certificate after the client's handshake is over, so the refusal reaches
// a client that is already sending requests: the request may fail with the
// connection closed (or, with HTTP/2, "client conn could not be
// established") rather than with the alert. refused is called only after a
// failure: it makes a fresh connection and waits for the server's first
// bytes, which come only once the server has accepted the certificate.
func (c *Client) refused(ctx context.Context) error {
	if p, err := c.tr.Proxy(&http.Request{URL: c.base}); err != nil || p != nil {
		return nil // the answer would be the proxy's
	}
	ctx, cancel := context.WithTimeout(ctx, c.connect)
	defer cancel()
	addr := c.base.Host
	if c.base.Port() == "" {
		addr = net.JoinHostPort(c.base.Hostname(), "443")
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		raw.SetDeadline(dl)
	}
	cfg := c.tr.TLSClientConfig.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = c.base.Hostname()
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(raw, cfg)
	err = tc.HandshakeContext(ctx)
	if err == nil {
		_, err = tc.Read(make([]byte, 1))
	}
	if err != nil && isAuthError(err) {
		return err
	}
	return nil
}

// unwrapURL drops the *url.Error around a transport error: its text
// repeats the method and URL, which the caller's context says better.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// call sends req and decodes a JSON answer into out (if not nil).
func (c *Client) call(ctx context.Context, req request, out any) error {
	resp, err := c.do(ctx, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		// A cut answer is a network error; retrying may help.
		return fmt.Errorf("remote: %s: reading the answer: %w", req.op, err)
	}
	return nil
}

// nameQuery names a generation, or a disk of it, in query parameters:
// percent-encoding keeps any bytes, so the store judges the names.
func nameQuery(vm string, gen uint64, disk ...string) url.Values {
	q := url.Values{"vm": {vm}, "gen": {strconv.FormatUint(gen, 10)}}
	if len(disk) > 0 {
		q.Set("disk", disk[0])
	}
	return q
}

// Stage streams the stream to the server as it reads it. The server
// verifies it as it arrives and answers as soon as it fails, which ends the
// upload. A broken connection fails Stage with a retryable error and stages
// nothing. Stage does not read stream after it returns (it does not close
// it either).
func (c *Client) Stage(ctx context.Context, vm string, gen uint64, disk string, stream io.Reader) error {
	q := nameQuery(vm, gen, disk)
	body := &stageBody{r: stream}
	resp, err := c.do(ctx, request{op: "stage", method: http.MethodPut, path: pathStage, query: q, body: body})
	body.Close()
	if rerr := body.readErr(); rerr != nil {
		return fmt.Errorf("remote: stage %s/%s generation %d: reading the stream: %w", vm, disk, gen, rerr)
	}
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// stageBody hands the caller's stream to the HTTP transport. The transport
// may read and close a request body from its own goroutine even after the
// request returned; Close makes sure Stage's caller gets its reader back
// untouched from then on.
type stageBody struct {
	mu     sync.Mutex
	r      io.Reader
	closed bool
	err    error // the stream's own error, not io.EOF
}

var errBodyClosed = errors.New("remote: stage body closed")

func (b *stageBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errBodyClosed
	}
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *stageBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

func (b *stageBody) readErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Commit asks the server to apply generation gen.
func (c *Client) Commit(ctx context.Context, vm string, gen uint64, cm target.Commit) error {
	// JSON would turn invalid UTF-8 into U+FFFD, so a bad name would
	// arrive as another, valid one. Names are UTF-8 in every store.
	for _, d := range cm.Disks {
		if !utf8.ValidString(d) {
			return &Error{Op: "commit", Kind: target.ErrBadName, permanent: true,
				Message: fmt.Sprintf("disk name %q is not UTF-8", d)}
		}
	}
	if !utf8.ValidString(cm.Source) {
		return &Error{Op: "commit", Kind: target.ErrBadName, permanent: true,
			Message: fmt.Sprintf("source name %q is not UTF-8", cm.Source)}
	}
	b, err := json.Marshal(commitRequest{
		Source:        cm.Source,
		Frozen:        cm.Frozen,
		Kind:          cm.Kind,
		Disks:         cm.Disks,
		AppConsistent: cm.AppConsistent,
	})
	if err != nil {
		return fmt.Errorf("remote: commit: %w", err)
	}
	return c.call(ctx, request{op: "commit", method: http.MethodPost, path: pathCommit,
		query: nameQuery(vm, gen), body: bytes.NewReader(b), json: true}, nil)
}

// VMs lists the VMs of this client's identity.
func (c *Client) VMs(ctx context.Context) ([]string, error) {
	var resp vmsResponse
	if err := c.call(ctx, request{op: "vms", method: http.MethodGet, path: pathVMs}, &resp); err != nil {
		return nil, err
	}
	if resp.VMs == nil {
		resp.VMs = []string{}
	}
	return resp.VMs, nil
}

// Points lists the recovery points of vm.
func (c *Client) Points(ctx context.Context, vm string) ([]target.Point, error) {
	var resp pointsResponse
	err := c.call(ctx, request{op: "points", method: http.MethodGet, path: pathPoints, query: url.Values{"vm": {vm}}}, &resp)
	if err != nil {
		return nil, err
	}
	return resp.Points, nil
}

// Expire drops old recovery points of vm.
func (c *Client) Expire(ctx context.Context, vm string, before time.Time, keep int) error {
	b, err := json.Marshal(expireRequest{Before: before, Keep: keep})
	if err != nil {
		return fmt.Errorf("remote: expire: %w", err)
	}
	return c.call(ctx, request{op: "expire", method: http.MethodPost, path: pathExpire,
		query: url.Values{"vm": {vm}}, body: bytes.NewReader(b), json: true}, nil)
}

// Open opens disk of vm at point gen on the server. The DiskReader reads
// ranges on demand (at most 4 MiB per request); it is safe for parallel
// ReadAt calls. Close it: the server keeps the point from expiring while it
// is open (and closes it itself after it has been idle for a while).
func (c *Client) Open(ctx context.Context, vm string, gen uint64, disk string) (target.DiskReader, error) {
	r := &diskReader{c: c, vm: vm, gen: gen, disk: disk}
	id, size, err := r.open(ctx)
	if err != nil {
		return nil, err
	}
	r.id, r.size = id, size
	return r, nil
}

// diskReader is the client side of an open DiskReader.
type diskReader struct {
	c        *Client
	vm, disk string
	gen      uint64
	size     int64
	mu       sync.Mutex
	id       string // the server's reader id; changes if reopened
	closed   bool
}

func (r *diskReader) open(ctx context.Context) (string, int64, error) {
	q := nameQuery(r.vm, r.gen, r.disk)
	var resp openResponse
	if err := r.c.call(ctx, request{op: "open", method: http.MethodPost, path: pathReaders, query: q}, &resp); err != nil {
		return "", 0, err
	}
	return resp.ID, resp.Size, nil
}

func (r *diskReader) Size() int64 { return r.size }

// ctx bounds one request of a reader, which has no context of its own: a
// live connection to a stuck server fails after a while too.
func (r *diskReader) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 4*r.c.stall)
}

// current returns the reader id.
func (r *diskReader) current() (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return "", os.ErrClosed
	}
	return r.id, nil
}

// withReader runs fn with the reader id; if the server no longer has the
// reader (closed for idleness, evicted, or the server restarted), it opens
// the point again and runs fn again, a few times at most. A point never
// changes, so the new reader reads the same bytes.
func (r *diskReader) withReader(fn func(id string) error) error {
	id, err := r.current()
	if err != nil {
		return err
	}
	for range 3 {
		err = fn(id)
		var e *Error
		if !errors.As(err, &e) || e.wireKind != kindReaderGone {
			return err
		}
		if id, err = r.reopen(id); err != nil {
			return err
		}
	}
	return err
}

// reopen replaces the reader gone, unless another call did already, and
// returns the new id.
func (r *diskReader) reopen(gone string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return "", os.ErrClosed
	}
	if r.id != gone {
		return r.id, nil
	}
	ctx, cancel := r.ctx()
	defer cancel()
	id, size, err := r.open(ctx)
	if err != nil {
		return "", err
	}
	if size != r.size {
		r.closeID(id)
		return "", fmt.Errorf("remote: %s/%s point %d: size %d on reopening, was %d", r.vm, r.disk, r.gen, size, r.size)
	}
	r.id = id
	return id, nil
}

// ReadAt reads len(p) bytes at off, in requests of at most 4 MiB.
func (r *diskReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("remote: read at negative offset %d", off)
	}
	total := 0
	for len(p) > 0 {
		if off >= r.size {
			return total, io.EOF
		}
		n := int(min(int64(len(p)), r.size-off, maxRead))
		err := r.withReader(func(id string) error { return r.readChunk(id, p[:n], off) })
		if err != nil {
			return total, err
		}
		total += n
		p, off = p[n:], off+int64(n)
	}
	return total, nil
}

// readChunk fills p from off, which the server has whole: anything short
// is an error.
func (r *diskReader) readChunk(id string, p []byte, off int64) error {
	ctx, cancel := r.ctx()
	defer cancel()
	resp, err := r.c.do(ctx, request{op: "read", method: http.MethodGet, path: pathReaders + "/" + id,
		query: url.Values{"off": {strconv.FormatInt(off, 10)}, "len": {strconv.Itoa(len(p))}}})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength != int64(len(p)) {
		return fmt.Errorf("remote: read %d bytes at %d of %s/%s point %d: the server sent %d", len(p), off, r.vm, r.disk, r.gen, resp.ContentLength)
	}
	if _, err := io.ReadFull(resp.Body, p); err != nil {
		return fmt.Errorf("remote: read %d bytes at %d of %s/%s point %d: %w", len(p), off, r.vm, r.disk, r.gen, err)
	}
	return nil
}

// Extents lists the allocated ranges of the disk.
func (r *diskReader) Extents() ([]target.Extent, error) {
	var resp extentsResponse
	err := r.withReader(func(id string) error {
		ctx, cancel := r.ctx()
		defer cancel()
		return r.c.call(ctx, request{op: "extents", method: http.MethodGet, path: pathReaders + "/" + id + "/extents"}, &resp)
	})
	if err != nil {
		return nil, err
	}
	exts := make([]target.Extent, len(resp.Extents))
	for i, e := range resp.Extents {
		exts[i] = target.Extent{Off: e[0], Len: e[1]}
	}
	return exts, nil
}

// Close releases the reader on the server. It is idempotent.
func (r *diskReader) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	id := r.id
	r.mu.Unlock()
	return r.closeID(id)
}

func (r *diskReader) closeID(id string) error {
	ctx, cancel := r.ctx()
	defer cancel()
	return r.c.call(ctx, request{op: "close", method: http.MethodDelete, path: pathReaders + "/" + id}, nil)
}

// Checksums asks the server for the sums of chunks of disk of vm at point
// gen: the server computes them where the replica lives and only the sums
// cross the network (1 byte for a chunk of zeros, 17 for another). A
// server that does not know the call (an older version) gives an error
// wrapping errors.ErrUnsupported.
func (c *Client) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if err := chunksum.CheckRequest(chunk, ranges); err != nil {
		return nil, err
	}
	body := make([]byte, 0, rangeBytes*len(ranges))
	var n int
	for _, rg := range ranges {
		body = binary.BigEndian.AppendUint64(body, uint64(rg.Off))
		body = binary.BigEndian.AppendUint64(body, uint64(rg.Len))
		n += int(rg.Len / chunk)
	}
	q := nameQuery(vm, gen, disk)
	q.Set("chunk", strconv.FormatInt(chunk, 10))
	resp, err := c.do(ctx, request{op: "sums", method: http.MethodPost, path: pathSums, query: q, body: bytes.NewReader(body)})
	if err != nil {
		var e *Error
		if errors.As(err, &e) && e.wireKind == "" && e.Kind == nil && (e.Status == http.StatusNotFound || e.Status == http.StatusMethodNotAllowed) {
			return nil, fmt.Errorf("%w (%w)", err, errors.ErrUnsupported)
		}
		return nil, err
	}
	defer resp.Body.Close()
	limit := int64(n) * (1 + int64(len(target.Sum{})))
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("remote: sums: reading the answer: %w", err)
	}
	sums := make([]target.Sum, 0, n)
	for len(b) > 0 && len(sums) < n {
		switch {
		case b[0] == sumZero:
			sums = append(sums, target.ZeroSum)
			b = b[1:]
		case b[0] == sumData && len(b) >= 1+len(target.Sum{}):
			sums = append(sums, target.Sum(b[1:1+len(target.Sum{})]))
			b = b[1+len(target.Sum{}):]
		default:
			return nil, fmt.Errorf("remote: sums: malformed answer at sum %d", len(sums))
		}
	}
	if len(sums) != n || len(b) != 0 {
		return nil, fmt.Errorf("remote: sums: %d sums and %d bytes more in the answer, want %d sums", len(sums), len(b), n)
	}
	return sums, nil
}
