package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/drfs-project/drfs/internal/pki"
	"github.com/drfs-project/drfs/target/remote"
)

// pkiCmd makes the certificates of a two-site setup (docs/tls.md).
type pkiCmd struct {
	Init   pkiInitCmd   `cmd:"" help:"Create a certificate authority: ca.crt and ca.key in --dir."`
	Server pkiServerCmd `cmd:"" help:"Issue the certificate of a drfs target serve, for the names and addresses source hosts connect to."`
	Host   pkiHostCmd   `cmd:"" help:"Issue a source host's client certificate; NAME is the host's identity on the target."`
}

// pkiDir is where the CA's files and the certificates go.
type pkiDir struct {
	Dir string `default:"." placeholder:"DIR" type:"path" help:"Directory of the CA's files (ca.crt, ca.key) and of the certificates issued (default: the current one)."`
}

func (d pkiDir) path(name string) string { return filepath.Join(d.Dir, name) }

// loadCA reads the CA that pki init wrote in the directory.
func (d pkiDir) loadCA() (*pki.CA, error) {
	ca, err := pki.LoadCA(d.path("ca.crt"), d.path("ca.key"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no CA in %s: run drfs pki init --dir %s first", d.Dir, d.Dir)
	}
	return ca, err
}

// writeCert writes name.crt (0644) and name.key (0600), neither replacing
// a file.
func (d pkiDir) writeCert(name string, c *pki.Cert) error {
	crt, key := d.path(name+".crt"), d.path(name+".key")
	for _, f := range []string{crt, key} {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists already: remove it or choose another name", f)
		}
	}
	if err := pki.WriteNew(key, c.KeyPEM, 0o600); err != nil {
		return err
	}
	if err := pki.WriteNew(crt, c.CertPEM, 0o644); err != nil {
		os.Remove(key)
		return err
	}
	fmt.Printf("wrote %s and %s (valid until %s)\n", crt, key, c.Leaf.NotAfter.Format(time.DateOnly))
	return nil
}

// issue has the directory's CA issue a certificate valid for v with fn,
// and writes it as name.crt and name.key.
func (d pkiDir) issue(name string, v validity, fn func(ca *pki.CA, from, to time.Time) (*pki.Cert, error)) error {
	from, to, err := v.span()
	if err != nil {
		return err
	}
	ca, err := d.loadCA()
	if err != nil {
		return err
	}
	cert, err := fn(ca, from, to)
	if err != nil {
		return err
	}
	return d.writeCert(name, cert)
}

// validity is how long a certificate is valid, from an hour ago (clocks
// differ between sites).
type validity struct {
	Days int `default:"825" help:"Validity in days."`
}

func (v validity) span() (time.Time, time.Time, error) {
	if v.Days < 1 {
		return time.Time{}, time.Time{}, fmt.Errorf("--days %d: give at least 1", v.Days)
	}
	now := time.Now()
	return now.Add(-time.Hour), now.AddDate(0, 0, v.Days), nil
}

type pkiInitCmd struct {
	pkiDir
	Name string `default:"drfs CA" help:"Name of the CA (its certificate's CommonName)."`
	Days int    `default:"3650" help:"Validity in days."`
}

func (c *pkiInitCmd) Run() error {
	from, to, err := validity{c.Days}.span()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return err
	}
	crt, key := c.path("ca.crt"), c.path("ca.key")
	for _, f := range []string{crt, key} {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists already: a CA is there (remove it to make a new one; certificates it issued stop working)", f)
		}
	}
	ca, err := pki.NewCA(c.Name, from, to)
	if err != nil {
		return err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := pki.WriteNew(key, keyPEM, 0o600); err != nil {
		return err
	}
	if err := pki.WriteNew(crt, ca.PEM, 0o644); err != nil {
		os.Remove(key)
		return err
	}
	fmt.Printf("wrote %s and %s: keep the key where only you can read it; give ca.crt to both sites (--tls-ca, --client-ca)\n", crt, key)
	return nil
}

type pkiServerCmd struct {
	Name string   `arg:"" help:"Name of the files: NAME.crt and NAME.key in --dir."`
	DNS  []string `name:"dns" placeholder:"NAME" help:"DNS name source hosts connect to the target by (repeatable, or comma-separated)."`
	IP   []string `name:"ip" placeholder:"ADDR" help:"IP address source hosts connect to the target at (repeatable, or comma-separated)."`
	pkiDir
	validity
}

func (c *pkiServerCmd) Run() error {
	var ips []net.IP
	for _, s := range c.IP {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	if len(c.DNS) == 0 && len(ips) == 0 {
		return errors.New("give the names source hosts connect to the target by: --dns NAME and/or --ip ADDR (a certificate without them is refused by every client)")
	}
	return c.issue(c.Name, c.validity, func(ca *pki.CA, from, to time.Time) (*pki.Cert, error) {
		return ca.Server(c.DNS, ips, from, to)
	})
}

type pkiHostCmd struct {
	Name string `arg:"" help:"The source host's identity on the target (letters, digits, '.', '_', '-'); also the name of the files NAME.crt and NAME.key in --dir."`
	pkiDir
	validity
}

func (c *pkiHostCmd) Run() error {
	if err := remote.CheckIdentity(c.Name); err != nil {
		return err
	}
	return c.issue(c.Name, c.validity, func(ca *pki.CA, from, to time.Time) (*pki.Cert, error) {
		return ca.Host(c.Name, from, to)
	})
}
