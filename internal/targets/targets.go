// Package targets opens the target.Store a user names by URL: dir:///path
// for a directory store (local or a mounted recovery site), https://host:port
// for a `drfs target serve` over mutual TLS, azblob://account/container[/prefix]
// for Azure Blob page blobs.
package targets

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/azblob"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/remote"
)

// TLS names the files a source host authenticates with to a remote target.
type TLS struct {
	Cert string `name:"tls-cert" placeholder:"FILE" type:"path" help:"Client certificate (PEM) for an https:// target; its CommonName is this host's identity there." env:"DRFS_TLS_CERT"`
	Key  string `name:"tls-key" placeholder:"FILE" type:"path" help:"Private key (PEM) of --tls-cert." env:"DRFS_TLS_KEY"`
	CA   string `name:"tls-ca" placeholder:"FILE" type:"path" help:"CA certificates (PEM) that sign the target server's certificate." env:"DRFS_TLS_CA"`
}

// Compression modes of what a source ships (--compress).
const (
	// CompressAuto compresses the streams to a target they reach over a
	// network (https://, azblob://) and not those to a directory target:
	// a directory store decodes the stream in the shipping process and
	// writes the blocks uncompressed, also when the directory is a mounted
	// share, so LZ4 would cost CPU on both ends and save nothing.
	CompressAuto = "auto"
	CompressLZ4  = "lz4"  // always LZ4 (each block only where it shrinks)
	CompressNone = "none" // never: for a network faster than LZ4
)

// Compresses says whether the streams shipped to the target at rawURL are
// LZ4-compressed under mode (CompressAuto for "").
func Compresses(rawURL, mode string) (bool, error) {
	switch mode {
	case CompressLZ4:
		return true, nil
	case CompressNone:
		return false, nil
	case CompressAuto, "":
		u, err := url.Parse(rawURL)
		return err != nil || u.Scheme != "dir", nil
	}
	return false, fmt.Errorf("compression %q: use auto, lz4 or none", mode)
}

// Store is a target.Store that holds resources until closed.
type Store interface {
	target.Store
	io.Closer
}

// OpenExisting opens the store at rawURL for commands that read a
// recovery site (points, restore, verify, failover, points mount): a
// directory target must exist already, so that a mistyped path is an error
// rather than a new, empty store, and is opened read-only, so that these
// commands work while a mount or agent replicates to it.
func OpenExisting(rawURL string, tlsFiles TLS) (Store, error) {
	if u, err := url.Parse(rawURL); err == nil && u.Scheme == "dir" && u.Host == "" && filepath.IsAbs(u.Path) {
		fi, err := os.Stat(u.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, fmt.Errorf("target %s: %s does not exist: nothing was replicated there (check the path)", rawURL, u.Path)
		case err != nil:
			return nil, fmt.Errorf("target %s: %w", rawURL, err)
		case !fi.IsDir():
			return nil, fmt.Errorf("target %s: %s is not a directory", rawURL, u.Path)
		}
		s, err := dirstore.OpenReadOnly(u.Path, dirstore.Options{})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", rawURL, err)
		}
		return s, nil
	}
	return Open(rawURL, tlsFiles)
}

// Check finds, without opening anything or contacting the network, the
// mistakes of a configuration that Open would only meet later: a target
// URL that is not one (rawURL may be "": no target), and a TLS file that is
// missing or not a regular file (each set one is checked, whatever the
// target: drfs protect --target may name an https target later). Errors
// are one line and begin with the setting's name: target, tls-cert,
// tls-key or tls-ca.
func Check(rawURL string, tlsFiles TLS) error {
	if rawURL != "" {
		u, err := parse(rawURL)
		if err != nil {
			return err
		}
		if u.Scheme == "https" && (tlsFiles.Cert == "" || tlsFiles.Key == "" || tlsFiles.CA == "") {
			return fmt.Errorf("target %s: an https target needs tls-cert, tls-key and tls-ca", rawURL)
		}
	}
	for _, f := range [][2]string{{"tls-cert", tlsFiles.Cert}, {"tls-key", tlsFiles.Key}, {"tls-ca", tlsFiles.CA}} {
		if f[1] == "" {
			continue
		}
		fi, err := os.Stat(f[1])
		switch {
		case err != nil:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return fmt.Errorf("%s %s: %w", f[0], f[1], err)
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s %s is not a file: give the PEM file", f[0], f[1])
		}
	}
	return nil
}

// parse parses the target URL rawURL and checks its form for its kind,
// with the errors of Open.
func parse(rawURL string) (*url.URL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", rawURL, err)
	}
	switch u.Scheme {
	case "dir":
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return nil, fmt.Errorf("target %q: a directory target is dir:///absolute/path", rawURL)
		}
		return u, nil
	case "https":
		if u.Host == "" {
			return nil, fmt.Errorf("target %q: an https target is https://host:port", rawURL)
		}
		return u, nil
	case "azblob":
		if u.Host == "" || strings.Trim(u.Path, "/") == "" {
			return nil, fmt.Errorf("target %q: an Azure Blob target is azblob://ACCOUNT/CONTAINER[/PREFIX]", u.Redacted())
		}
		return u, nil
	case "":
		if strings.HasPrefix(rawURL, "/") {
			return nil, fmt.Errorf("target %q: write a directory target as dir://%s", rawURL, rawURL)
		}
	}
	return nil, unknownKind(rawURL, u.Scheme)
}

// Open opens the store at rawURL; a directory target is created if it
// does not exist (the first replication to it).
func Open(rawURL string, tlsFiles TLS) (Store, error) {
	u, err := parse(rawURL)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "dir":
		path := u.Path
		if err := os.MkdirAll(path, 0o700); err != nil {
			return nil, fmt.Errorf("target %s: %w", rawURL, err)
		}
		s, err := dirstore.Open(path, dirstore.Options{})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", rawURL, err)
		}
		return s, nil
	case "https":
		if tlsFiles.Cert == "" || tlsFiles.Key == "" || tlsFiles.CA == "" {
			return nil, fmt.Errorf("target %s: an https target needs --tls-cert, --tls-key and --tls-ca", rawURL)
		}
		c, err := remote.Dial(rawURL, remote.ClientOptions{CertFile: tlsFiles.Cert, KeyFile: tlsFiles.Key, CAFile: tlsFiles.CA})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", rawURL, err)
		}
		return c, nil
	case "azblob":
		// Credentials come from the environment (azblob.EnvConnectionString,
		// EnvAccountKey, EnvSASToken); errors never show them.
		s, err := azblob.New(rawURL, azblob.Options{})
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", u.Redacted(), err)
		}
		return s, nil
	}
	return nil, unknownKind(rawURL, u.Scheme)
}

// unknownKind is the error of a target URL of no kind Open knows.
func unknownKind(rawURL, scheme string) error {
	return fmt.Errorf("target %q: unknown kind %q: use dir:///path, https://host:port or azblob://account/container", rawURL, scheme)
}
