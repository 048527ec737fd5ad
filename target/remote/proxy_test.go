package remote_test

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/remote"
	"github.com/drfs-project/drfs/target/storetest"
)

// faultKind is what a faultyProxy does to a connection.
type faultKind int

const (
	cut      faultKind = iota // forward n bytes, then reset both sides
	truncate                  // forward n bytes, then end the stream (FIN) in that direction
	stall                     // forward n bytes, then nothing either way, connections left open
	flip                      // flip a bit of byte n
)

func (k faultKind) String() string { return [...]string{"cut", "truncate", "stall", "flip"}[k] }

// fault is a fault on the bytes from the client to the server (up) or back.
type fault struct {
	kind faultKind
	up   bool
	n    int64
}

func (f fault) String() string {
	dir := "down"
	if f.up {
		dir = "up"
	}
	return fmt.Sprintf("%v-%s-%d", f.kind, dir, f.n)
}

// faultyProxy is a TCP proxy that applies its fault to the connections
// it carries while the fault is set: each connection counts its bytes in
// either direction from its start, and the fault strikes when the count
// passes fault.n. Healing (set(nil)) stops faults that have not struck yet;
// a connection that was cut stays cut and a stalled one stays stalled.
type faultyProxy struct {
	ln     net.Listener
	target string
	done   chan struct{}
	wg     sync.WaitGroup

	mu    sync.Mutex
	fault *fault
	epoch int // counts set calls
	conns []net.Conn
	up    int64 // bytes forwarded client to server, all connections
	down  int64
}

func newProxy(t *testing.T, target string) *faultyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultyProxy{ln: ln, target: target, done: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *faultyProxy) url() string { return "https://" + p.ln.Addr().String() }

func (p *faultyProxy) set(f *fault) {
	p.mu.Lock()
	p.fault = f
	p.epoch++
	p.mu.Unlock()
}

// current returns the fault set in the given epoch, or nil if the proxy
// has been set since.
func (p *faultyProxy) current(epoch int) *fault {
	p.mu.Lock()
	defer p.mu.Unlock()
	if epoch != p.epoch {
		return nil
	}
	return p.fault
}

// counts returns the bytes forwarded in each direction so far.
func (p *faultyProxy) counts() (up, down int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.up, p.down
}

func (p *faultyProxy) close() {
	p.ln.Close()
	close(p.done)
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultyProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		epoch := p.epoch
		p.mu.Unlock()
		pc := &proxyConn{p: p, epoch: epoch, stalled: make(chan struct{})}
		p.wg.Add(2)
		go pc.pump(s.(*net.TCPConn), c.(*net.TCPConn), true)
		go pc.pump(c.(*net.TCPConn), s.(*net.TCPConn), false)
	}
}

// proxyConn is one proxied connection.
type proxyConn struct {
	p       *faultyProxy
	epoch   int
	stalled chan struct{} // closed when a stall strikes: both directions stop
	once    sync.Once
}

// pump copies src to dst, in direction up (client to server) or down.
func (pc *proxyConn) pump(dst, src *net.TCPConn, up bool) {
	p := pc.p
	defer p.wg.Done()
	buf := make([]byte, 16<<10)
	var n int64
	flipped := false
	for {
		k, err := src.Read(buf)
		select {
		case <-pc.stalled:
			<-p.done
			return
		default:
		}
		chunk := buf[:k]
		if f := p.current(pc.epoch); f != nil && f.up == up && k > 0 && n+int64(k) > f.n && !flipped {
			at := f.n - n
			switch f.kind {
			case flip:
				chunk[at] ^= 0x08
				flipped = true
			case cut:
				dst.Write(chunk[:at])
				for _, c := range []*net.TCPConn{dst, src} {
					c.SetLinger(0)
					c.Close()
				}
				return
			case truncate:
				dst.Write(chunk[:at])
				dst.CloseWrite()
				return
			case stall:
				dst.Write(chunk[:at])
				pc.once.Do(func() { close(pc.stalled) })
				<-p.done
				return
			}
		}
		if k > 0 {
			if _, werr := dst.Write(chunk); werr != nil {
				src.Close()
				return
			}
			n += int64(k)
			p.mu.Lock()
			if up {
				p.up += int64(k)
			} else {
				p.down += int64(k)
			}
			p.mu.Unlock()
		}
		if err != nil {
			dst.CloseWrite()
			return
		}
	}
}

// TestFaultyNetwork stages and commits generations through a proxy that
// cuts, truncates, stalls or corrupts the connection: every attempt either
// succeeds with the right data or fails without a partial commit, and once
// the proxy is healed the retry succeeds and the store restores exactly.
func TestFaultyNetwork(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: stalls wait for timeouts")
	}
	ts := startServer(t, serverConfig{stall: 2 * time.Second})
	px := newProxy(t, ts.addr)
	direct := ts.client(t, ts.pki.ClientA, "")
	viaProxy := ts.client(t, ts.pki.ClientA, px.url(), remote.ClientOptions{
		ConnectTimeout: time.Second,
		StallTimeout:   time.Second,
	})
	rng := rand.New(rand.NewPCG(storetest.Seed(t), 11))

	// One 3 MiB disk; each generation changes about 600 KB of it. The first
	// goes through the healthy proxy, to measure a generation's traffic.
	m := &storetest.VM{Name: "vm-faulty", Source: "source-a"}
	g := m.Next(1)
	g.Add("d", 3<<20)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 400})
	if err := g.Apply(ctx, viaProxy); err != nil {
		t.Fatal(err)
	}
	up, down := px.counts()
	t.Logf("a generation of %d stream bytes: %d bytes up, %d down", len(g.Streams["d"]), up, down)

	var faults []fault
	for _, k := range []faultKind{cut, truncate, stall, flip} {
		// The handshake (up to about 2 KB either way), the stream, and its
		// end or the answers. Stalls wait for timeouts: fewer of them.
		ups, downs := []int64{300, up / 3, up * 9 / 10}, []int64{300, down / 2, down - 60}
		if k == stall {
			ups, downs = []int64{300, up / 3}, []int64{down / 2}
		}
		for _, n := range ups {
			faults = append(faults, fault{kind: k, up: true, n: n})
		}
		for _, n := range downs {
			faults = append(faults, fault{kind: k, up: false, n: n})
		}
	}
	lost := 0
	for _, f := range faults {
		t.Run(f.String(), func(t *testing.T) {
			g := m.Next(m.Newest().Gen + 1)
			g.RandomGen(rng, storetest.RandomOptions{Changes: 400})
			if err := g.Build(); err != nil {
				t.Fatal(err)
			}
			viaProxy.Close() // the fault applies to new connections
			px.set(&f)
			start := time.Now()
			err := g.Stage(ctx, viaProxy)
			if err == nil {
				err = viaProxy.Commit(ctx, m.Name, g.Gen, g.Commit())
			}
			px.set(nil)
			t.Logf("through the faulty proxy (%v): %v", time.Since(start).Round(time.Millisecond), err)
			if err != nil && target.IsPermanent(err) {
				t.Fatalf("a network fault gave a permanent error: %v", err)
			}

			// The store is at a whole point: the one before, or the new one
			// if only the answer was lost.
			pts, perr := direct.Points(ctx, m.Name)
			if perr != nil {
				t.Fatal(perr)
			}
			switch newest := pts[len(pts)-1].Generation; {
			case err == nil && newest != g.Gen:
				t.Fatalf("Commit succeeded but the newest point is %d", newest)
			case newest == g.Gen:
				if err != nil {
					t.Logf("generation %d was committed; the answer was lost", g.Gen)
					lost++
				}
				g.Committed()
			}
			if len(pts) != len(m.Points) {
				t.Fatalf("%d points after the attempt, want %d", len(pts), len(m.Points))
			}

			// Healed: the retry succeeds, whatever happened before.
			if err := g.Stage(ctx, viaProxy); err != nil {
				t.Fatalf("Stage after healing: %v", err)
			}
			if err := viaProxy.Commit(ctx, m.Name, g.Gen, g.Commit()); err != nil {
				t.Fatalf("Commit after healing: %v", err)
			}
			if m.Newest().Gen != g.Gen {
				g.Committed()
			}
			checkNewest(t, viaProxy, m)
		})
	}
	t.Logf("%d commits whose answer was lost", lost)
	// Every point restores exactly (the newest ones were checked above).
	m.Points = m.Points[:len(m.Points)-3]
	for _, p := range m.Points {
		for d, want := range p.Disks {
			checkRestore(t, direct, m.Name, p.Gen, d, want)
		}
	}
	// Nothing a fault left behind is visible.
	vms, err := direct.VMs(ctx)
	if err != nil || len(vms) != 1 {
		t.Fatalf("VMs = %q, %v", vms, err)
	}
}

// checkNewest checks the list of points of m and the disks of the newest.
func checkNewest(t *testing.T, st target.Store, m *storetest.VM) {
	t.Helper()
	pts, err := st.Points(ctx, m.Name)
	if err != nil {
		t.Fatal(err)
	}
	if len(pts) != len(m.Points) || pts[len(pts)-1].Generation != m.Newest().Gen {
		t.Fatalf("%d points, newest %d; want %d, newest %d", len(pts), pts[len(pts)-1].Generation, len(m.Points), m.Newest().Gen)
	}
	p := m.Newest()
	for d, want := range p.Disks {
		checkRestore(t, st, m.Name, p.Gen, d, want)
	}
}

// checkRestore reads a disk whole, as a restore does, and compares it with
// want.
func checkRestore(t *testing.T, st target.Store, vm string, gen uint64, disk string, want []byte) {
	t.Helper()
	r, err := st.Open(ctx, vm, gen, disk)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, r.Size())
	if n, err := r.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
		t.Fatalf("%s/%s point %d: ReadAt = %d, %v; want %d", vm, disk, gen, n, err, len(got))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s/%s point %d: restored %d bytes differ from the %d written", vm, disk, gen, len(got), len(want))
	}
}
