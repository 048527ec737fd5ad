// Package tlstest makes certificates for tests of mutual TLS: a CA, a server
// certificate for 127.0.0.1 and localhost, client certificates named by
// their subject CommonName, an expired client certificate and certificates
// signed by another CA. Keys are ECDSA P-256, made in memory; WriteFiles
// puts any of them in a directory as PEM files for the command line.
package tlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte // the CA certificate
}

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
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"drfs test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
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
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
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
	return ca.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, notBefore, notAfter)
}

func (ca *CA) issue(t testing.TB, tmpl *x509.Certificate, notBefore, notAfter time.Time) *Cert {
	t.Helper()
	key := newKey(t)
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := &Cert{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if c.TLS, err = tls.X509KeyPair(c.CertPEM, c.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return c
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

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
