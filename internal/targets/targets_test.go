package targets

import "testing"

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
