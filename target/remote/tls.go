package remote

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// maxIdentity is the longest identity: a path element on the server.
const maxIdentity = 64

// Identity returns the identity of a client certificate: its subject
// CommonName. The server keeps each identity's replicas apart.
func Identity(cert *x509.Certificate) string { return cert.Subject.CommonName }

// CheckIdentity reports whether id can be an identity: 1 to 64 ASCII
// letters, digits, '.', '_' or '-', not starting with '.' or '-'. Such a
// name is a safe single path element on any filesystem (no separator, no
// "." or "..", nothing a shell or a URL treats specially).
func CheckIdentity(id string) error {
	switch {
	case id == "":
		return errors.New("identity: the certificate has no subject CommonName")
	case len(id) > maxIdentity:
		return fmt.Errorf("identity %.64q...: longer than %d bytes", id, maxIdentity)
	case id[0] == '.' || id[0] == '-':
		return fmt.Errorf("identity %q: starts with %q", id, id[0])
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("identity %q: character %q is not a letter, digit, '.', '_' or '-'", id, c)
		}
	}
	return nil
}

// LoadCertificate reads a certificate chain and its private key from PEM
// files; errors name the file and say what is wrong in one line.
func LoadCertificate(certFile, keyFile string) (tls.Certificate, error) {
	certPEM, err := readPEM("certificate", certFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	if _, err := parseCerts("certificate", certFile, certPEM); err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readPEM("key", keyFile)
	if err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("key %s for certificate %s: %v", keyFile, certFile, err)
	}
	return cert, nil
}

// LoadCertPool reads CA certificates from a PEM file.
func LoadCertPool(file string) (*x509.CertPool, error) {
	b, err := readPEM("CA certificates", file)
	if err != nil {
		return nil, err
	}
	certs, err := parseCerts("CA certificates", file, b)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

func readPEM(what, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s %s: %v", what, file, err)
	}
	return b, nil
}

// parseCerts parses every CERTIFICATE block of a PEM file; there must be at
// least one.
func parseCerts(what, file string, b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: certificate %d: %v", what, file, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s %s: no PEM certificate in the file", what, file)
	}
	return certs, nil
}

// authAlerts are the TLS alerts by which a peer refuses our certificate or
// our TLS version: retrying will not help.
var authAlerts = []tls.AlertError{
	42,  // bad_certificate
	43,  // unsupported_certificate
	44,  // certificate_revoked
	45,  // certificate_expired
	46,  // certificate_unknown
	48,  // unknown_ca
	49,  // access_denied
	70,  // protocol_version
	71,  // insufficient_security
	116, // certificate_required
	120, // no_application_protocol
}

// explainTLS says in words which of the usual mistakes a TLS refusal err
// is: the target's certificate does not name the host connected to, has expired, or was not signed by the CA the client
// trusts; or the target refused this host's certificate as expired, signed
// by a CA it does not trust, or missing. "" if err is none of those.
func explainTLS(err error) string {
	var (
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		unknownCA x509.UnknownAuthorityError
	)
	switch {
	case errors.As(err, &hostname):
		c := hostname.Certificate
		var names []string
		names = append(names, c.DNSNames...)
		for _, ip := range c.IPAddresses {
			names = append(names, ip.String())
		}
		if len(names) == 0 {
			return fmt.Sprintf("the target's certificate names no host (no subject alternative name) and so is not valid for %s: issue it with the names clients connect to (drfs pki server --dns/--ip)", hostname.Host)
		}
		return fmt.Sprintf("the target's certificate is valid for %s, not for %s: connect to one of those names, or issue it for %s (drfs pki server --dns/--ip)",
			strings.Join(names, ", "), hostname.Host, hostname.Host)
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		c := invalid.Cert
		return fmt.Sprintf("the target's certificate is valid only from %s to %s, not now: issue it again", c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
	case errors.As(err, &unknownCA):
		return "the target's certificate is not signed by the CA in --tls-ca (or tls-ca): give the CA that issued it"
	}
	switch alertOf(err) {
	case 45: // certificate_expired
		return "the target refused this host's certificate: it has expired (or is not valid yet); issue it again (drfs pki host)"
	case 48: // unknown_ca
		return "the target refused this host's certificate: it is not signed by the CA the target trusts (its --client-ca)"
	case 116: // certificate_required
		return "the target requires a certificate signed by the CA it trusts (its --client-ca), and this host has none: give --tls-cert and --tls-key (or tls-cert and tls-key) issued by that CA"
	case 42: // bad_certificate
		return "the target refused this host's certificate (not a client certificate of a CA it trusts, or its name is not a valid identity)"
	}
	return ""
}

// alertOf returns the TLS alert a peer sent, as err carries it, or 0.
func alertOf(err error) tls.AlertError {
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return alert
	}
	// An alert the peer sent over TCP arrives as a *net.OpError "remote
	// error" around an unexported type whose text is the alert's.
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" && op.Err != nil {
		for _, a := range authAlerts {
			if op.Err.Error() == a.Error() {
				return a
			}
		}
	}
	return 0
}

// isAuthError reports whether err is a TLS refusal: the server's
// certificate does not verify, or the server refused ours.
func isAuthError(err error) bool {
	var (
		unknownCA *x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		hostname  x509.HostnameError
		verify    *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return true
	}
	return slices.Contains(authAlerts, alertOf(err))
}
