// Package tlstest makes certificates for tests of mutual TLS: a CA, a server
// certificate for 127.0.0.1 and localhost, client certificates named by
// their subject CommonName, an expired client certificate and certificates
// signed by another CA. Keys are ECDSA P-256, made in memory; WriteFiles
// puts any of them in a directory as PEM files for the command line.
package tlstest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drfs-project/drfs/internal/pki"
)

// CA is a certificate authority.
type CA struct{ *pki.CA }

// Cert is a certificate with its private key.
type Cert struct {
	TLS     tls.Certificate // leaf parsed
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA returns a new self-signed CA named name, valid from an hour ago for
// a day.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := pki.NewCA(name, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return &CA{ca}
}

// Pool returns a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Server returns a server certificate for 127.0.0.1, ::1 and localhost.
func (ca *CA) Server(t testing.TB) *Cert {
	t.Helper()
	return cert(t)(ca.CA.Server([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)))
}

// Client returns a client certificate whose subject CommonName is cn.
func (ca *CA) Client(t testing.TB, cn string) *Cert {
	t.Helper()
	return ca.ClientValid(t, cn, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
}

// ClientValid returns a client certificate for cn valid from notBefore to
// notAfter (in the past for an expired one).
func (ca *CA) ClientValid(t testing.TB, cn string, notBefore, notAfter time.Time) *Cert {
	t.Helper()
	return cert(t)(ca.Host(cn, notBefore, notAfter))
}

// cert returns a function that turns what pki issued into a Cert, failing
// t on an error.
func cert(t testing.TB) func(*pki.Cert, error) *Cert {
	return func(pc *pki.Cert, err error) *Cert {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		c := &Cert{CertPEM: pc.CertPEM, KeyPEM: pc.KeyPEM}
		if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
			t.Fatal(err)
		}
		return c
	}
}

// PKI is the usual set of a test of mutual TLS.
type PKI struct {
	CA      *CA
	Server  *Cert // for 127.0.0.1, ::1 and localhost
	ClientA *Cert // CommonName "host-a"
	ClientB *Cert // CommonName "host-b"
	Expired *Cert // CommonName "host-a", expired yesterday
	Other   *CA   // a CA nobody trusts
	Foreign *Cert // CommonName "host-a", signed by Other
}

// Identities of PKI's client certificates.
const (
	IdentityA = "host-a"
	IdentityB = "host-b"
)

// New returns a new PKI.
func New(t testing.TB) *PKI {
	t.Helper()
	ca := NewCA(t, "drfs test CA")
	other := NewCA(t, "drfs other CA")
	return &PKI{
		CA:      ca,
		Server:  ca.Server(t),
		ClientA: ca.Client(t, IdentityA),
		ClientB: ca.Client(t, IdentityB),
		Expired: ca.ClientValid(t, IdentityA, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)),
		Other:   other,
		Foreign: other.Client(t, IdentityA),
	}
}

// WriteFiles writes c to dir as name.crt and name.key and returns their
// paths.
func (c *Cert) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	write(t, certFile, c.CertPEM)
	write(t, keyFile, c.KeyPEM)
	return certFile, keyFile
}

// WriteFile writes the CA certificate to dir as name.crt and returns its
// path.
func (ca *CA) WriteFile(t testing.TB, dir, name string) string {
	t.Helper()
	f := filepath.Join(dir, name+".crt")
	write(t, f, ca.PEM)
	return f
}

func write(t testing.TB, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
