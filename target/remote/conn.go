package remote

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// Go's TLS writes every record of at most 16 KiB with its own write(2),
// and reads the socket about a record at a time; an HTTP/2 DATA frame of
// 16 KiB is even two records (its 9-byte header pushes it past one). For
// a bulk upload that is some 130,000 system calls per GiB on each side.
// The two wrappers below sit under the TLS layer and cut that down without
// changing a byte on the wire.

// recordBuffer is how many bytes of TLS records a coalescingConn gathers,
// and how much a bufferedConn reads at once.
const recordBuffer = 256 << 10

// maxRecord is the length of a full TLS 1.3 application data record on the
// wire: 16 KiB of plaintext, its content type byte, a 16-byte AEAD tag and
// the 5-byte record header. Go's TLS pads nothing, so a record shorter than
// this is the last of a tls.Conn.Write.
const maxRecord = 5 + 16<<10 + 1 + 16

// coalescingFlush bounds how long full records may wait for the rest of
// their write: TLS splits a write of an exact multiple of 16 KiB into full
// records only, and nothing says it ended.
const coalescingFlush = 500 * time.Microsecond

// coalescingConn gathers the full-size records that crypto/tls writes one
// by one and sends them together with the short record that ends the
// write (one write), or when recordBuffer fills, or coalescingFlush after
// the first one waits. It assumes each Write is one TLS record, as
// crypto/tls does; a Write that is not a full record (a handshake message,
// a short record) is sent at once with whatever waits. A failed write is
// sticky: the connection is dead to TLS anyway.
type coalescingConn struct {
	net.Conn

	mu    sync.Mutex
	buf   []byte // waiting records
	timer *time.Timer
	err   error
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, buf: make([]byte, 0, recordBuffer)}
	cc.timer = time.AfterFunc(time.Hour, cc.timedFlush)
	cc.timer.Stop()
	return cc
}

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == maxRecord && len(c.buf)+len(p) <= cap(c.buf) {
		if len(c.buf) == 0 {
			c.timer.Reset(coalescingFlush)
		}
		c.buf = append(c.buf, p...) // crypto/tls reuses p for the next record
		return len(p), nil
	}
	if err := c.flushLocked(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flushLocked sends the waiting records and then p, in one write: p is
// copied behind them (a wrapped net.Conn has no writev).
func (c *coalescingConn) flushLocked(p []byte) error {
	c.timer.Stop()
	out := p
	if len(c.buf) > 0 {
		c.buf = append(c.buf, p...)
		out = c.buf
	}
	if len(out) == 0 {
		return nil
	}
	_, err := c.Conn.Write(out)
	c.buf = c.buf[:0]
	if err != nil {
		c.err = err
	}
	return err
}

func (c *coalescingConn) timedFlush() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.flushLocked(nil)
	}
}

// Close sends what waits, then closes.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.flushLocked(nil)
	}
	c.mu.Unlock()
	return c.Conn.Close()
}

// bufferedConn reads the socket in pieces of up to recordBuffer, so that
// TLS's record-sized reads are served from memory.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func newBufferedConn(c net.Conn) *bufferedConn {
	return &bufferedConn{Conn: c, r: bufio.NewReaderSize(c, recordBuffer)}
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }
