package remote_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/remote"
	"github.com/drfs-project/drfs/target/storetest"
)

// nothingWritten fails t if the server created any store.
func (ts *testServer) nothingWritten(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir(ts.dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("the server wrote %v", ents)
	}
}

// wantAuth fails t unless err is a permanent ErrAuth.
func wantAuth(t *testing.T, what string, err error) {
	t.Helper()
	switch {
	case err == nil:
		t.Fatalf("%s: no error, want ErrAuth", what)
	case !errors.Is(err, target.ErrAuth) || !target.IsPermanent(err):
		t.Fatalf("%s: %v (permanent %v), want a permanent ErrAuth", what, err, target.IsPermanent(err))
	}
	t.Logf("%s: %v", what, err)
}

// tryAll stages and commits a generation and calls every other method; each
// must fail with a permanent ErrAuth.
func tryAll(t *testing.T, c *remote.Client) {
	t.Helper()
	m, g := storetest.NewVM(rand.New(rand.NewPCG(1, 2)), "vm", "d")
	if err := g.Build(); err != nil {
		t.Fatal(err)
	}
	wantAuth(t, "Stage", c.Stage(ctx, m.Name, 1, "d", bytes.NewReader(g.Streams["d"])))
	wantAuth(t, "Commit", c.Commit(ctx, m.Name, 1, g.Commit()))
	_, err := c.VMs(ctx)
	wantAuth(t, "VMs", err)
	_, err = c.Points(ctx, m.Name)
	wantAuth(t, "Points", err)
	_, err = c.Open(ctx, m.Name, 1, "d")
	wantAuth(t, "Open", err)
	wantAuth(t, "Expire", c.Expire(ctx, m.Name, time.Now(), 1))
}

func TestRefusedClients(t *testing.T) {
	ts := startServer(t)
	other := tlstest.NewCA(t, "another CA")
	for _, tc := range []struct {
		name string
		cert *tlstest.Cert
	}{
		{"WrongCA", ts.pki.Foreign},
		{"Expired", ts.pki.Expired},
		{"BadIdentity", ts.pki.CA.Client(t, "../host-b")},
		{"NoIdentity", ts.pki.CA.Client(t, "")},
		{"SlashIdentity", ts.pki.CA.Client(t, "a/b")},
		{"OtherCASameName", other.Client(t, tlstest.IdentityA)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The certificate from a callback: Dial cannot check it first.
			c, err := remote.Dial(ts.url, remote.ClientOptions{TLS: &tls.Config{
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tc.cert.TLS, nil },
				RootCAs:              ts.pki.CA.Pool(),
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tryAll(t, c)
		})
	}
	ts.nothingWritten(t)
	if log := ts.log.String(); !strings.Contains(log, "connection refused") {
		t.Errorf("the server log does not mention refused connections:\n%s", log)
	}
}

// TestUnknownServer: a client refuses a server whose certificate its CA did
// not sign.
func TestUnknownServer(t *testing.T) {
	ts := startServer(t)
	c, err := remote.Dial(ts.url, remote.ClientOptions{TLS: &tls.Config{
		Certificates: []tls.Certificate{ts.pki.ClientA.TLS},
		RootCAs:      ts.pki.Other.Pool(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tryAll(t, c)
	ts.nothingWritten(t)
}

// rawClient returns an HTTP client with cfg, speaking HTTP/2 if h2.
func rawClient(cfg *tls.Config, h2 bool) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg}
	if h2 {
		var p http.Protocols
		p.SetHTTP2(true)
		tr.Protocols = &p
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestRefusedTransports: no client certificate, plain HTTP, TLS 1.2 and
// HTTP/1.1 are refused before anything reaches a store.
func TestRefusedTransports(t *testing.T) {
	ts := startServer(t)
	_, g := storetest.NewVM(rand.New(rand.NewPCG(1, 2)), "vm", "d")
	if err := g.Build(); err != nil {
		t.Fatal(err)
	}
	stream := g.Streams["d"]
	pool := ts.pki.CA.Pool()
	certA := []tls.Certificate{ts.pki.ClientA.TLS}
	for _, tc := range []struct {
		name   string
		client *http.Client
		scheme string
	}{
		{"NoClientCert", rawClient(&tls.Config{RootCAs: pool}, true), "https"},
		{"PlainHTTP", &http.Client{Timeout: 10 * time.Second}, "http"},
		{"TLS12", rawClient(&tls.Config{RootCAs: pool, Certificates: certA, MaxVersion: tls.VersionTLS12}, true), "https"},
		{"HTTP1", rawClient(&tls.Config{RootCAs: pool, Certificates: certA}, false), "https"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.client.CloseIdleConnections()
			for _, req := range []func() (*http.Request, error){
				func() (*http.Request, error) { return http.NewRequest("GET", tc.scheme+"://"+ts.addr+"/v1/vms", nil) },
				func() (*http.Request, error) {
					return http.NewRequest("PUT", tc.scheme+"://"+ts.addr+"/v1/stage?vm=vm&gen=1&disk=d", bytes.NewReader(stream))
				},
				func() (*http.Request, error) {
					return http.NewRequest("POST", tc.scheme+"://"+ts.addr+"/v1/commit?vm=vm&gen=1",
						strings.NewReader(`{"source":"source-a","kind":"initial","disks":["d"]}`))
				},
			} {
				r, err := req()
				if err != nil {
					t.Fatal(err)
				}
				resp, err := tc.client.Do(r)
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode < 400 {
						t.Fatalf("%s %s: %s %q, want a refusal", r.Method, r.URL.Path, resp.Status, body)
					}
					t.Logf("%s %s: %s %q", r.Method, r.URL.Path, resp.Status, body)
				} else {
					t.Logf("%s %s: %v", r.Method, r.URL.Path, err)
				}
			}
		})
	}
	ts.nothingWritten(t)

	// The same client with a certificate and HTTP/2 gets in.
	c := rawClient(&tls.Config{RootCAs: pool, Certificates: certA}, true)
	defer c.CloseIdleConnections()
	resp, err := c.Get(ts.url + "/v1/vms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || resp.TLS.Version != tls.VersionTLS13 {
		t.Fatalf("good client: %s %s TLS %x", resp.Status, resp.Proto, resp.TLS.Version)
	}
}

// TestDialChecksIdentity: Dial refuses a client certificate the server
// would refuse.
func TestDialChecksIdentity(t *testing.T) {
	ca := tlstest.NewCA(t, "CA")
	for _, cn := range []string{"", "../x", "a/b"} {
		_, err := remote.Dial("https://127.0.0.1:1", remote.ClientOptions{TLS: &tls.Config{
			Certificates: []tls.Certificate{ca.Client(t, cn).TLS},
			RootCAs:      ca.Pool(),
		}})
		if err == nil || !strings.Contains(err.Error(), "identity") {
			t.Errorf("Dial with CommonName %q: %v, want an identity error", cn, err)
		}
	}
}

func TestCheckIdentity(t *testing.T) {
	for _, ok := range []string{"host-a", "a", "A.b_c-9", strings.Repeat("x", 64), "a.."} {
		if err := remote.CheckIdentity(ok); err != nil {
			t.Errorf("CheckIdentity(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", ".hidden", "-x", "a/b", "a\\b", "a b", "a\x00", "é", strings.Repeat("x", 65), "a:b"} {
		if err := remote.CheckIdentity(bad); err == nil {
			t.Errorf("CheckIdentity(%q): no error", bad)
		}
	}
}

// TestTLSErrorsNamed: the usual mistakes of a TLS setup are named as such
// in the client's error, not only as "not authorised": a server
// certificate that does not name the host connected to, a server
// certificate of a CA the client does not trust, and a client certificate
// the server refuses as expired or of a CA it does not trust.
func TestTLSErrorsNamed(t *testing.T) {
	ts := startServer(t)
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		want string
	}{
		{"ServerName", &tls.Config{Certificates: []tls.Certificate{ts.pki.ClientA.TLS}, RootCAs: ts.pki.CA.Pool(), ServerName: "dr.example.com"},
			"valid for localhost, 127.0.0.1, ::1, not for dr.example.com"},
		{"ServerCA", &tls.Config{Certificates: []tls.Certificate{ts.pki.ClientA.TLS}, RootCAs: ts.pki.Other.Pool()},
			"not signed by the CA in --tls-ca"},
		{"ClientExpired", &tls.Config{Certificates: []tls.Certificate{ts.pki.Expired.TLS}, RootCAs: ts.pki.CA.Pool()},
			"refused this host's certificate: it has expired"},
		{"ClientCA", &tls.Config{Certificates: []tls.Certificate{ts.pki.Foreign.TLS}, RootCAs: ts.pki.CA.Pool()},
			"requires a certificate signed by the CA it trusts"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := remote.Dial(ts.url, remote.ClientOptions{TLS: tc.cfg})
			if err == nil {
				defer c.Close()
				_, err = c.VMs(ctx)
			}
			if err == nil || !errors.Is(err, target.ErrAuth) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrAuth saying %q", err, tc.want)
			}
			t.Log(err)
		})
	}
}
