package remote_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/remote"
)

var ctx = context.Background()

var discardLog = slog.New(slog.DiscardHandler)

// testServer is a Server on a loopback port in front of one directory
// store per identity, under dir.
type testServer struct {
	pki  *tlstest.PKI
	srv  *remote.Server
	url  string
	addr string
	dir  string
	log  *syncBuffer

	shutDown bool // the test shuts the server down itself
}

type serverConfig struct {
	stall      time.Duration
	readerIdle time.Duration
	maxReaders int
}

func startServer(t testing.TB, cfgs ...serverConfig) *testServer {
	t.Helper()
	var cfg serverConfig
	if len(cfgs) > 0 {
		cfg = cfgs[0]
	}
	return startServerIn(t, tlstest.New(t), t.TempDir(), cfg)
}

// startServerOn starts a new server with the PKI and directory of old.
func startServerOn(t testing.TB, old *testServer) *testServer {
	return startServerIn(t, old.pki, old.dir, serverConfig{})
}

func startServerIn(t testing.TB, pki *tlstest.PKI, dir string, cfg serverConfig) *testServer {
	t.Helper()
	ts := &testServer{pki: pki, dir: dir, log: &syncBuffer{}}
	srv, err := remote.NewServer(remote.ServerOptions{
		Certificates: []tls.Certificate{ts.pki.Server.TLS},
		ClientCAs:    ts.pki.CA.Pool(),
		Open: func(id string) (target.Store, error) {
			return dirstore.Open(filepath.Join(ts.dir, id), dirstore.Options{})
		},
		Log:          slog.New(slog.NewTextHandler(ts.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		StallTimeout: cfg.stall,
		ReaderIdle:   cfg.readerIdle,
		MaxReaders:   cfg.maxReaders,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.srv, ts.addr, ts.url = srv, ln.Addr().String(), "https://"+ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil && !ts.shutDown {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if t.Failed() {
			t.Logf("server log:\n%s", ts.log.String())
		}
	})
	return ts
}

// client returns a Client with cert, talking to url (the server's if "").
func (ts *testServer) client(t testing.TB, cert *tlstest.Cert, url string, opts ...remote.ClientOptions) *remote.Client {
	t.Helper()
	var o remote.ClientOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if url == "" {
		url = ts.url
	}
	o.TLS = &tls.Config{Certificates: []tls.Certificate{cert.TLS}, RootCAs: ts.pki.CA.Pool()}
	c, err := remote.Dial(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
