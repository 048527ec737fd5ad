package shipper

import "testing"

func TestParseBandwidth(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Bandwidth
	}{
		{"0", 0},
		{"0/s", 0},
		{"500", 500},
		{"500B/s", 500},
		{"500k", 500 << 10},
		{"500K", 500 << 10},
		{"500KiB/s", 500 << 10},
		{"500kB/s", 500_000},
		{"50MiB/s", 50 << 20},
		{"50M", 50 << 20},
		{"50MB/s", 50_000_000},
		{" 1GB/s ", 1_000_000_000},
		{"1G", 1 << 30},
		{"1.5GiB/s", 3 << 29},
		{"2T", 2 << 40},
		{"2TB", 2_000_000_000_000},
		{"0.1", 1},
	} {
		got, err := ParseBandwidth(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseBandwidth(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "fast", "-1M", "1.2.3M", "10 furlongs/s", "5mb", "MiB", "1e3", "9999999TB"} {
		if got, err := ParseBandwidth(in); err == nil {
			t.Errorf("ParseBandwidth(%q) = %d, want an error", in, got)
		}
	}
	for _, b := range []Bandwidth{0, 1, 1000, 50 << 20, 3 << 29, 1 << 40} {
		text, _ := b.MarshalText()
		var back Bandwidth
		if err := back.UnmarshalText(text); err != nil || back != b {
			t.Errorf("%d → %q → %d, %v", b, text, back, err)
		}
	}
	if s := Bandwidth(50 << 20).String(); s != "50MiB/s" {
		t.Errorf("String() = %q", s)
	}
}
