package orchestrator

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{DefaultWindowSpec, "always", "never", "mon-fri,22:00-24:00", "fri-mon", "00:00-24:00", "7:05-7:06", "18-08", ",", "sat,"} {
		f.Add(s)
	}
	times := []time.Time{}
	for h := range 24 * 8 {
		times = append(times, time.Date(2026, 11, 22, h, 7*h%60, 0, 0, time.UTC))
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWindow(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "resync window ") {
				t.Fatalf("error without context: %v", err)
			}
			return
		}
		w = w.In(time.UTC)
		w2, err := ParseWindow(w.String())
		if err != nil || w2.String() != w.String() {
			t.Fatalf("canonical form %q does not read back: %v, %q", w.String(), err, w2.String())
		}
		w2 = w2.In(time.UTC)
		for _, at := range times {
			if w.InWindow(at) != w2.InWindow(at) {
				t.Fatalf("%q and %q differ at %v", s, w.String(), at)
			}
			open := w.NextOpen(at)
			if open.IsZero() {
				if s := w.String(); s != "never" {
					t.Fatalf("%q never opens", s)
				}
				continue
			}
			if open.Before(at) || !w.InWindow(open) || open.Sub(at) > 8*24*time.Hour {
				t.Fatalf("%q: NextOpen(%v) = %v", w.String(), at, open)
			}
			if open.After(at) && w.InWindow(open.Add(-time.Minute)) {
				t.Fatalf("%q: NextOpen(%v) = %v, but it was open a minute before", w.String(), at, open)
			}
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add("source: /a\nmountpoint: /b\nstate: /c\ninterval: 30s\nvms:\n  x:\n    retention: 1d\n")
	f.Add("source: /a\nmountpoint: /b\nstate: /c\nresync-window: sat\nresync-threshold: 80%\nvms: {a: {}, b: {rpo-warning: 1h}, c:}\n")
	f.Add("source: '/a: b'\nmountpoint: \"/b\\tc\"\nstate: /c\nsource-id: \"null\"\nmax-points: 7\nbandwidth: 1KiB/s\nvms:\n  \"true\": &p {interval: 1m}\n  \"#\": *p\n")
	f.Add("source = /a\n[vm x]\ninterval = 30s\n")
	f.Add("vms: [x]\ninterval: {a: 1}\nstate:\nstate: x\n? [a]\n: b\n")
	f.Add("source: /a\n\tstate: [\n")
	f.Fuzz(func(t *testing.T, text string) {
		c, err := ParseConfig("f.yaml", []byte(text))
		if err != nil {
			lines := strings.Count(text, "\n") + 1
			for _, e := range unjoin(err) {
				var ce *ConfigError
				if !errors.As(e, &ce) || ce.Line < 0 || ce.Line > lines || ce.File != "f.yaml" {
					t.Fatalf("bad error %#v", e)
				}
			}
			return
		}
		for _, p := range append([]VMConfig{{Policy: c.Defaults}}, c.VMs...) {
			if err := p.Policy.Validate(); err != nil {
				t.Fatalf("accepted an invalid policy: %v", err)
			}
		}
		out := c.Format()
		c2, err := ParseConfig("f.yaml", []byte(out))
		if err != nil {
			t.Fatalf("formatted config does not parse: %v\n%s", err, out)
		}
		if out2 := c2.Format(); out2 != out {
			t.Fatalf("format is not stable:\n%s\n%s", out, out2)
		}
	})
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
