package remote

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"

	"github.com/drfs-project/drfs/internal/tlstest"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestCoalescingConn: TLS over the wrappers carries writes of every size,
// exact multiples of a record included, unchanged, with far fewer socket
// writes than records.
func TestCoalescingConn(t *testing.T) {
	ca := tlstest.NewCA(t, "ca")
	srv := ca.Server(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	var sizes []int
	total := 0
	for total < 8<<20 {
		n := []int{16 << 10, 32 << 10, 1 + rng.IntN(300<<10), 7}[rng.IntN(4)]
		sizes = append(sizes, n)
		total += n
	}
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}

	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		tc := tls.Server(newBufferedConn(c), &tls.Config{Certificates: []tls.Certificate{srv.TLS}, MinVersion: tls.VersionTLS13})
		b := make([]byte, total)
		if _, err := io.ReadFull(tc, b); err != nil {
			t.Error(err)
		}
		tc.Write([]byte{1}) // the answer the client waits for
		got <- b
	}()

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	counter := &countingConn{Conn: raw}
	tc := tls.Client(newCoalescingConn(counter), &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", MinVersion: tls.VersionTLS13})
	defer tc.Close()
	calls := int64(len(sizes))
	for off, n := 0, 0; off < total; off += n {
		n = sizes[0]
		sizes = sizes[1:]
		if _, err := tc.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
	}
	// The last write may be records only: the timer sends them.
	var one [1]byte
	if _, err := io.ReadFull(tc, one[:]); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatal("the server read other bytes")
	}
	// At most one per Write (its last record ends it), one per full
	// buffer, one per small record of the first 128 KiB (TLS's dynamic
	// record sizing), and a few for the handshake and the timer; TLS makes
	// a record of each 16 KiB.
	records := int64(total / (16 << 10))
	if w := counter.writes.Load(); w > calls+int64(total/recordBuffer)+128+10 || w > records/2 {
		t.Errorf("%d socket writes for %d writes of about %d records", w, calls, records)
	}
}
