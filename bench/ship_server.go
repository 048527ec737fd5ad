package bench

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/remote"
)

// shipServer is the remote server of one round: "drfs target serve" in a
// child process, or remote.NewServer in this one.
type shipServer struct {
	addr string

	// child process
	cmd    *exec.Cmd
	exited chan error // the child's exit, after its stderr was read to the end
	tail   *lineTail

	// in-process
	srv    *remote.Server
	served chan error
}

// serverReadyTimeout bounds the wait for the server's "serving" line.
const serverReadyTimeout = 30 * time.Second

// startShipServer starts a server of the directory stores under dir (one
// per identity, as "drfs target serve --dir dir") on a free port of
// 127.0.0.1.
func startShipServer(ctx context.Context, command []string, pki *shipPKI, dir string) (*shipServer, error) {
	if command == nil {
		return startInProcessServer(pki, dir)
	}
	args := append(command[1:len(command):len(command)],
		"--dir", dir, "--listen", "127.0.0.1:0",
		"--cert", pki.serverCert, "--key", pki.serverKey, "--client-ca", pki.caFile)
	cmd := exec.Command(command[0], args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the server %s: %w", command[0], err)
	}
	s := &shipServer{cmd: cmd, exited: make(chan error, 1), tail: &lineTail{}}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			s.tail.add(line)
			if addr, ok := servingAddr(line); ok {
				select {
				case ready <- addr:
				default:
				}
			}
		}
		// Wait only once the pipe is drained (os/exec's rule).
		s.exited <- cmd.Wait()
	}()
	timer := time.NewTimer(serverReadyTimeout)
	defer timer.Stop()
	select {
	case s.addr = <-ready:
		return s, nil
	case err := <-s.exited:
		return nil, fmt.Errorf("the server exited before it served (%v): %s", err, s.tail)
	case <-timer.C:
		err = fmt.Errorf("the server did not say it serves within %v: %s", serverReadyTimeout, s.tail)
	case <-ctx.Done():
		err = ctx.Err()
	}
	cmd.Process.Kill()
	<-s.exited
	return nil, err
}

// servingAddr finds the address in the line "drfs target serve" logs once
// it listens: ... msg="drfs target: serving" dir=... addr=127.0.0.1:PORT
func servingAddr(line string) (string, bool) {
	if !strings.Contains(line, "drfs target: serving") {
		return "", false
	}
	_, rest, ok := strings.Cut(line, " addr=")
	if !ok {
		return "", false
	}
	addr, _, _ := strings.Cut(rest, " ")
	addr = strings.Trim(addr, `"`)
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", false
	}
	return addr, true
}

func startInProcessServer(pki *shipPKI, dir string) (*shipServer, error) {
	srv, err := remote.NewServer(remote.ServerOptions{
		Certificates: []tls.Certificate{pki.server},
		ClientCAs:    pki.pool,
		Open: func(identity string) (target.Store, error) {
			return dirstore.Open(filepath.Join(dir, identity), dirstore.Options{})
		},
		Log: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &shipServer{addr: ln.Addr().String(), srv: srv, served: make(chan error, 1)}
	go func() { s.served <- srv.Serve(ln) }()
	return s, nil
}

// peakRSS is the child's peak resident set size so far (VmHWM), or 0 for
// an in-process server.
func (s *shipServer) peakRSS() int64 {
	if s.cmd == nil {
		return 0
	}
	n, _ := pidStatus(s.cmd.Process.Pid, "VmHWM")
	return n
}

// stop shuts the server down cleanly and returns the child's CPU time
// (user and system; 0 in-process).
func (s *shipServer) stop() (time.Duration, error) {
	if s.cmd == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := s.srv.Shutdown(ctx)
		<-s.served
		return 0, err
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	var err error
	select {
	case err = <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		err = errors.New("killed after 30s")
	}
	st := s.cmd.ProcessState
	if err != nil {
		return 0, fmt.Errorf("the server did not stop cleanly (%v): %s", err, s.tail)
	}
	return st.UserTime() + st.SystemTime(), nil
}

// lineTail keeps the last lines of a child's stderr for error messages.
type lineTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *lineTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, line)
	if len(t.lines) > 10 {
		t.lines = t.lines[1:]
	}
}

func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(t.lines, " | ")
}

// shipPKI is the certificates of the remote case, made in memory for the
// run: a CA, a server certificate for 127.0.0.1, and the client
// certificate of shipIdentity. The server's files are written for the
// child process.
type shipPKI struct {
	pool   *x509.CertPool
	server tls.Certificate
	client tls.Certificate

	caFile, serverCert, serverKey string

	mu    sync.Mutex
	suite string // the TLS version and cipher suite of the last connection
}

func newShipPKI(dir string) (*shipPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "drfs bench CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	issue := func(serial int64, tmpl *x509.Certificate) (tls.Certificate, []byte, []byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, nil, nil, err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = caTmpl.NotBefore, caTmpl.NotAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return tls.Certificate{}, nil, nil, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return tls.Certificate{}, nil, nil, err
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		return c, certPEM, keyPEM, err
	}
	p := &shipPKI{pool: x509.NewCertPool()}
	p.pool.AddCert(ca)
	var srvCert, srvKey []byte
	p.server, srvCert, srvKey, err = issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, err
	}
	p.client, _, _, err = issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: shipIdentity},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	p.caFile = filepath.Join(dir, "ca.crt")
	p.serverCert = filepath.Join(dir, "server.crt")
	p.serverKey = filepath.Join(dir, "server.key")
	for name, data := range map[string][]byte{
		p.caFile:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		p.serverCert: srvCert,
		p.serverKey:  srvKey,
	} {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// clientConfig is the source host's TLS configuration; it notes what each
// connection negotiated.
func (p *shipPKI) clientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{p.client},
		RootCAs:      p.pool,
		VerifyConnection: func(cs tls.ConnectionState) error {
			p.mu.Lock()
			defer p.mu.Unlock()
			p.suite = tls.VersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)
			return nil
		},
	}
}

// negotiated returns the TLS version and cipher suite of the last
// connection, or "".
func (p *shipPKI) negotiated() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.suite
}
