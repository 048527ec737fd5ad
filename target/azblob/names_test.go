package azblob

import (
	"errors"
	"strings"
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// These tests need no Azurite.

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"root.img", "root.img"},
		{"data/disk1.raw", "data/disk1.raw"},
		{"a b/c%d", "a%20b/c%25d"},
		{"trailing./x.", "trailing%2E/x%2E"},
		{"back\\slash", "back%5Cslash"},
		{"é", "%C3%A9"},
		{"?#&=+", "%3F%23%26%3D%2B"},
		{"..a", "..a"},
	} {
		if got := escapePath(tc.in); got != tc.want {
			t.Errorf("escapePath(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if back, ok := unescape(tc.want); !ok || back != tc.in {
			t.Errorf("unescape(%q) = %q, %v; want %q", tc.want, back, ok, tc.in)
		}
	}
	for _, bad := range []string{"a%2", "a%zz", "a%2e", "a b", "a.", "a%41", "x/y."} {
		if got, ok := unescape(bad); ok {
			t.Errorf("unescape(%q) = %q, want not ok (not what escape writes)", bad, got)
		}
	}
}

func FuzzEscape(f *testing.F) {
	for _, s := range []string{"a", "a/b", "a./b.", "%", "é/ü", "x\x01y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := escapePath(s)
		for i := 0; i < len(e); i++ {
			if c := e[i]; !safeByte(c) && c != '/' && c != '%' {
				t.Fatalf("escapePath(%q) = %q has %q", s, e, c)
			}
		}
		if back, ok := unescape(e); !ok || back != s {
			t.Fatalf("unescape(escapePath(%q)) = %q, %v", s, back, ok)
		}
	})
}

func TestNamesChecked(t *testing.T) {
	s, err := New("azblob://acct/cont", Options{AccountKey: azuriteKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range storetest.BadNames {
		if err := checkVM(bad); !errors.Is(err, target.ErrBadName) {
			t.Errorf("checkVM(%q) = %v", bad, err)
		}
		if err := checkDisk(bad); !errors.Is(err, target.ErrBadName) {
			t.Errorf("checkDisk(%q) = %v", bad, err)
		}
	}
	// The longest names fit; escaped multi-byte ones may not.
	long := strings.Repeat("v", maxName)
	if err := s.checkBlobName(long, strings.Repeat("d", maxName)); err != nil {
		t.Errorf("longest ASCII names: %v", err)
	}
	wide := strings.Repeat("é", maxName/2)
	if err := s.checkBlobName(wide, wide); !errors.Is(err, target.ErrBadName) || !target.IsPermanent(err) {
		t.Errorf("names that escape past 1024 bytes: %v, want ErrBadName", err)
	}
}

func TestNewURL(t *testing.T) {
	t.Setenv(EnvConnectionString, "")
	t.Setenv(EnvAccountKey, "")
	t.Setenv(EnvSASToken, "")
	key := Options{AccountKey: azuriteKey}
	for _, tc := range []struct {
		url       string
		opts      Options
		container string
		prefix    string
		endpoint  string
		parallel  int
		create    bool
	}{
		{"azblob://acct/cont", key, "cont", "", "https://acct.blob.core.windows.net/cont", 8, false},
		{"azblob://acct/cont/a/b/", key, "cont", "a/b/", "https://acct.blob.core.windows.net/cont", 8, false},
		{"azblob://acct/cont/my%20vms?parallel=3&create=true", key, "cont", "my%20vms/", "https://acct.blob.core.windows.net/cont", 3, true},
		{"azblob://devstoreaccount1/c-1?endpoint=http://127.0.0.1:10000/devstoreaccount1", key, "c-1", "", "http://127.0.0.1:10000/devstoreaccount1/c-1", 8, false},
		{"azblob://acct/cont?endpoint=https://acct.blob.core.usgovcloudapi.net/", Options{SASToken: "?sv=2020&sig=abc"}, "cont", "", "https://acct.blob.core.usgovcloudapi.net/cont", 8, false},
	} {
		s, err := New(tc.url, tc.opts)
		if err != nil {
			t.Errorf("New(%q): %v", tc.url, err)
			continue
		}
		u, _, _ := strings.Cut(s.cc.URL(), "?")
		if s.container != tc.container || s.prefix != tc.prefix || u != tc.endpoint || s.parallel != tc.parallel || s.create != tc.create {
			t.Errorf("New(%q): container %q prefix %q URL %q parallel %d create %v", tc.url, s.container, s.prefix, u, s.parallel, s.create)
		}
	}
	for _, bad := range []string{
		"azblob://acct", "azblob://acct/", "azblob://Acct/cont", "azblob://ac/cont", "azblob://acct/Cont", "azblob://acct/c",
		"azblob://acct/cont--x", "azblob://acct/cont/a//b", "azblob://acct/cont/../x", "azblob://acct/cont?endpoint=ftp://x",
		"azblob://acct/cont?parallel=0", "azblob://acct/cont?create=maybe", "azblob://acct/cont?retries=3",
		"azblob://user:key@acct/cont", "azblob://acct:10000/cont", "dir:///tmp",
	} {
		if _, err := New(bad, key); err == nil {
			t.Errorf("New(%q): no error", bad)
		}
	}
	_, err := New("azblob://acct/cont", Options{})
	if err == nil || !strings.Contains(err.Error(), EnvAccountKey) {
		t.Errorf("New without credentials: %v, want an error naming the variables", err)
	}
	t.Setenv(EnvAccountKey, azuriteKey)
	if _, err := New("azblob://acct/cont", Options{}); err != nil {
		t.Errorf("New with %s set: %v", EnvAccountKey, err)
	}
	_, err = New("azblob://acct/cont", Options{AccountKey: "not base64!"})
	if err == nil || strings.Contains(err.Error(), "not base64!") {
		t.Errorf("New with a bad key: %v", err)
	}
	_, err = New("azblob://acct/cont", Options{ConnectionString: "AccountName=other;AccountKey=" + azuriteKey})
	if err == nil || strings.Contains(err.Error(), azuriteKey) {
		t.Errorf("New with another account's connection string: %v", err)
	}
}
