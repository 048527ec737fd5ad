package targets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCompresses(t *testing.T) {
	for _, c := range []struct {
		url, mode string
		want      bool
	}{
		{"dir:///srv/dr", "", false},
		{"dir:///srv/dr", CompressAuto, false},
		{"dir:///srv/dr", CompressLZ4, true},
		{"https://dr.example.com:8443", CompressAuto, true},
		{"https://dr.example.com:8443", CompressNone, false},
		{"azblob://acct/container", "", true},
		{"azblob://acct/container", CompressNone, false},
	} {
		got, err := Compresses(c.url, c.mode)
		if err != nil || got != c.want {
			t.Errorf("Compresses(%q, %q) = %v, %v; want %v", c.url, c.mode, got, err, c.want)
		}
	}
	if _, err := Compresses("dir:///srv/dr", "zstd"); err == nil {
		t.Error("Compresses accepted the mode zstd")
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	pem := filepath.Join(dir, "host.crt")
	if err := os.WriteFile(pem, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.crt")
	all := TLS{Cert: pem, Key: pem, CA: pem}
	for _, c := range []struct {
		url  string
		tls  TLS
		want string // "" for no error
	}{
		{"", TLS{}, ""},
		{"dir://" + filepath.Join(dir, "target"), TLS{}, ""},
		{"https://dr.example.com:8443", all, ""},
		{"azblob://account/container", TLS{}, ""},
		{"ftp://x/y", TLS{}, `target "ftp://x/y": unknown kind "ftp"`},
		{"/srv/target", TLS{}, "write a directory target as dir:///srv/target"},
		{"dir://rel/path", TLS{}, "dir:///absolute/path"},
		{"https://", all, "https://host:port"},
		{"azblob://account", TLS{}, "azblob://ACCOUNT/CONTAINER"},
		{"https://dr.example.com:8443", TLS{Cert: pem, Key: pem}, "needs tls-cert, tls-key and tls-ca"},
		{"https://dr.example.com:8443", TLS{Cert: pem, Key: pem, CA: missing}, "tls-ca " + missing + ": no such file"},
		{"", TLS{Key: missing}, "tls-key " + missing},
		{"", TLS{Cert: dir}, "tls-cert " + dir + " is not a file"},
	} {
		err := Check(c.url, c.tls)
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("Check(%q, %+v) = %v, want %q", c.url, c.tls, err, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "target")); err == nil {
		t.Errorf("Check created the directory target")
	}
}
