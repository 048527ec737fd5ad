package resync_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/remote"
)

// wire counts the bytes a server's connections carry each way.
type wire struct{ up, down atomic.Int64 }

type countListener struct {
	net.Listener
	w *wire
}

func (l countListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countConn{Conn: c, w: l.w}, nil
}

type countConn struct {
	net.Conn
	w *wire
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.up.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.w.down.Add(int64(n))
	return n, err
}

// keepOpen hides the Close of a store, which the server would call at
// its shutdown.
func keepOpen(st target.Store) target.Store {
	if cs, ok := st.(target.Checksummer); ok {
		return struct {
			target.Store
			target.Checksummer
		}{st, cs}
	}
	return struct{ target.Store }{st}
}

// serve puts st behind a remote server and returns a client of it and the
// byte counts of the connections.
func serve(t testing.TB, st target.Store) (*remote.Client, *wire) {
	t.Helper()
	pki := tlstest.New(t)
	srv, err := remote.NewServer(remote.ServerOptions{
		Certificates: []tls.Certificate{pki.Server.TLS},
		ClientCAs:    pki.CA.Pool(),
		Open:         func(string) (target.Store, error) { return keepOpen(st), nil },
		Log:          slog.New(slog.DiscardHandler),
	})
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	w := &wire{}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(countListener{ln, w}) }()
	t.Cleanup(func() {
		sctx, cancel := contextWithTimeout(10 * time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
	})
	c, err := remote.Dial("https://"+ln.Addr().String(), remote.ClientOptions{
		TLS: &tls.Config{Certificates: []tls.Certificate{pki.ClientA.TLS}, RootCAs: pki.CA.Pool()},
	})
	must(t, err)
	t.Cleanup(func() { c.Close() })
	return c, w
}

// TestDiffRemote: through a remote client the server computes the sums and
// only they cross the wire; the result is the directory store's.
func TestDiffRemote(t *testing.T) {
	rng := testRand(t)
	size := int64(16<<20 + 100)
	r := newRig(t, randomImage(rng, size))
	corrupt(t, rng, r.replicaPath(), size, 25)
	corrupt(t, rng, r.srcPath, size, 25)
	local := r.mustDiff(nil, resync.Options{})

	c, w := serve(t, r.st)
	if _, err := c.Points(ctx, r.vm); err != nil { // connect: the handshake is not the Diff's
		t.Fatal(err)
	}
	up0, down0 := w.up.Load(), w.down.Load()
	res := r.mustDiff(c, resync.Options{})
	up, down := w.up.Load()-up0, w.down.Load()-down0
	if !slices.Equal(res.Ranges, local.Ranges) || !slices.Equal(res.Levels, local.Levels) || !res.StoreSums || res.TargetRead != 0 {
		t.Fatalf("remote: %+v\nlocal: %+v", res, local)
	}
	// The wire carries the sums, plus the HTTP/2 and TLS framing of each
	// request (and the Points call): nothing like the replica's data.
	overhead := 300 * (res.Requests + 1)
	t.Logf("wire: %d bytes up, %d down; sums: %d up, %d down in %d requests; data to send %d",
		up, down, res.SumBytesUp, res.SumBytesDown, res.Requests, res.SendBytes())
	if down < res.SumBytesDown || down > res.SumBytesDown+overhead || up > res.SumBytesUp+overhead {
		t.Fatalf("wire: %d bytes up, %d down, for %d and %d bytes of checksum traffic", up, down, res.SumBytesUp, res.SumBytesDown)
	}

	// The same client without the capability reads the replica instead.
	down0 = w.down.Load()
	res = r.mustDiff(noSums{c}, resync.Options{})
	down = w.down.Load() - down0
	if !slices.Equal(res.Ranges, local.Ranges) || res.StoreSums || down < res.TargetRead {
		t.Fatalf("remote without sums: %d bytes down, %d read: %+v", down, res.TargetRead, res)
	}
	t.Logf("without the capability: %d bytes down for %d bytes of the replica read", down, res.TargetRead)
}
