package azblob

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// The tests run against a real Azurite (scripts/azurite.sh start), found at
// AZURITE_BLOB_ENDPOINT (host:port, or the account's URL) or 127.0.0.1:10000,
// and skip when it is not running. Each test has a container of its own.

// Azurite's well-known development account.
const (
	azuriteAccount = "devstoreaccount1"
	azuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

var bg = context.Background()

// azuriteEndpoint returns the blob endpoint of the development account, or
// skips t if nothing answers there.
func azuriteEndpoint(t testing.TB) string {
	t.Helper()
	ep := os.Getenv("AZURITE_BLOB_ENDPOINT")
	if ep == "" {
		ep = "127.0.0.1:10000"
	}
	if !strings.Contains(ep, "://") {
		ep = "http://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil {
		t.Fatalf("AZURITE_BLOB_ENDPOINT=%q: %v", ep, err)
	}
	if strings.Trim(u.Path, "/") == "" {
		u.Path = "/" + azuriteAccount
	}
	conn, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err != nil {
		t.Skipf("azurite not running on %s: start it with scripts/azurite.sh start (after npm install -g azurite@3.37.0), or set AZURITE_BLOB_ENDPOINT", u.Host)
	}
	conn.Close()
	return strings.TrimSuffix(u.String(), "/")
}

// testURL returns the target URL of a new container name (not created).
func testURL(t testing.TB, prefix string) string {
	t.Helper()
	ep := azuriteEndpoint(t)
	var b [6]byte
	rand.Read(b[:])
	u := fmt.Sprintf("azblob://%s/t-%s", azuriteAccount, hex.EncodeToString(b[:]))
	if prefix != "" {
		u += "/" + prefix
	}
	return u + "?endpoint=" + url.QueryEscape(ep)
}

// newTestStore returns a store on a new container of Azurite, removed when
// t ends. opts.AccountKey defaults to Azurite's key.
func newTestStore(t testing.TB, opts Options) *Store {
	t.Helper()
	return openTestStore(t, testURL(t, ""), opts, true)
}

// openTestStore opens rawURL; with create, it creates the container and
// removes it when t ends.
func openTestStore(t testing.TB, rawURL string, opts Options, create bool) *Store {
	t.Helper()
	if opts.AccountKey == "" && opts.SASToken == "" && opts.ConnectionString == "" {
		opts.AccountKey = azuriteKey
	}
	if opts.Retry.RetryDelay == 0 {
		opts.Retry.RetryDelay = 50 * time.Millisecond
		opts.Retry.MaxRetryDelay = time.Second
	}
	s, err := New(rawURL, opts)
	if err != nil {
		t.Fatal(err)
	}
	if create {
		if _, err := s.cc.Create(bg, nil); err != nil {
			t.Fatalf("creating container %s: %v", s.container, s.fail("create container", s.container, err))
		}
		t.Cleanup(func() {
			clean, err := New(rawURL, Options{AccountKey: azuriteKey})
			if err == nil {
				clean.cc.Delete(bg, nil)
			}
		})
	}
	return s
}

func TestStore(t *testing.T) {
	azuriteEndpoint(t)
	storetest.Run(t, func(t *testing.T) target.Store { return newTestStore(t, Options{}) })
}

// TestStorePrefix runs the suite with a prefix, small page writes (every
// block its own write) and one writer.
func TestStorePrefix(t *testing.T) {
	azuriteEndpoint(t)
	if testing.Short() {
		t.Skip("short")
	}
	storetest.Run(t, func(t *testing.T) target.Store {
		return openTestStore(t, testURL(t, "some/prefix"), Options{Parallel: 1, PageWrite: 4096}, true)
	})
}
