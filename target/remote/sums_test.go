package remote_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestSumsFromReader: a server in front of a store without
// target.Checksummer computes the sums itself from a reader of the point.
func TestSumsFromReader(t *testing.T) {
	st, err := dirstore.Open(t.TempDir(), dirstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	rng := rand.New(rand.NewPCG(1, 9))
	m, g := storetest.NewVM(rng, "vm", "d")
	if err := g.Apply(ctx, st); err != nil {
		t.Fatal(err)
	}
	pki, url, _ := serveStore(t, func(string) (target.Store, error) { return struct{ target.Store }{st}, nil })
	c := dialPKI(t, pki, url)
	want := m.Newest().Disks["d"]
	ranges := []target.Extent{{Off: 0, Len: 8192}, {Off: 16384, Len: int64(len(want)) + 8192}}
	ranges[1].Len -= ranges[1].Len % 4096
	got, err := c.Checksums(ctx, "vm", 1, "d", 4096, ranges)
	if err != nil {
		t.Fatal(err)
	}
	if wantSums := storetest.ModelSums(want, 4096, ranges); !equalSums(got, wantSums) {
		t.Fatalf("sums %x\nwant %x", got, wantSums)
	}
	_, err = c.Checksums(ctx, "vm", 2, "d", 4096, ranges)
	if !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("sums of an unknown point: %v", err)
	}
}

func equalSums(a, b []target.Sum) bool {
	return len(a) == len(b) && bytes.Equal(sumBytes(a), sumBytes(b))
}

func sumBytes(s []target.Sum) []byte {
	var b []byte
	for _, x := range s {
		b = append(b, x[:]...)
	}
	return b
}

// TestSumsUnsupported: a server without the call (an older version) makes
// the client's Checksums fail with errors.ErrUnsupported.
func TestSumsUnsupported(t *testing.T) {
	pki := tlstest.New(t)
	var protos http.Protocols
	protos.SetHTTP2(true)
	srv := &http.Server{
		Handler:   http.NotFoundHandler(),
		Protocols: &protos,
		TLSConfig: &tls.Config{
			MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pki.Server.TLS},
			ClientCAs: pki.CA.Pool(), ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2"},
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	c := dialPKI(t, pki, "https://"+ln.Addr().String())
	_, err = c.Checksums(ctx, "vm", 1, "d", 4096, []target.Extent{{Off: 0, Len: 4096}})
	if !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Checksums on a server without the call: %v, want errors.ErrUnsupported", err)
	}
}

// TestSumsBadRequests: malformed checksum requests are permanent errors.
func TestSumsBadRequests(t *testing.T) {
	st, err := dirstore.Open(t.TempDir(), dirstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pki, url, _ := serveStore(t, func(string) (target.Store, error) { return st, nil })
	var protos http.Protocols
	protos.SetHTTP2(true)
	hc := &http.Client{Transport: &http.Transport{Protocols: &protos, TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{pki.ClientA.TLS}, RootCAs: pki.CA.Pool()}}}
	for _, tc := range []struct {
		query string
		body  []byte
	}{
		{"vm=vm&gen=1&disk=d&chunk=4096", make([]byte, 15)},
		{"vm=vm&gen=1&disk=d&chunk=x", make([]byte, 16)},
		{"vm=vm&gen=1&disk=d&chunk=4000", []byte{15: 0}},
		{"vm=vm&gen=x&disk=d&chunk=4096", make([]byte, 16)},
		{"vm=vm&gen=1&disk=d&chunk=4096", bytes.Repeat([]byte{0xff}, 16)},
		{"vm=vm&gen=1&disk=d&chunk=4096", make([]byte, 16*target.MaxSums+16)},
	} {
		resp, err := hc.Post(url+"/v1/sums?"+tc.query, "application/octet-stream", bytes.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s with %d bytes: status %d, want 400", tc.query, len(tc.body), resp.StatusCode)
		}
	}
	// The client refuses a bad request itself.
	c := dialPKI(t, pki, url)
	if _, err := c.Checksums(ctx, "vm", 1, "d", 4096, []target.Extent{{Off: 1, Len: 4096}}); !target.IsPermanent(err) {
		t.Fatalf("misaligned range: %v, want a permanent error", err)
	}
}
