package orchestrator

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/drfs-project/drfs/shipper"
)

// fullConfig sets every setting, and overrides the VM settings of two VMs.
const fullConfig = `# drfs agent
source: /srv/vms/
mountpoint: /run/drfs/vms
state: /var/lib/drfs
target: https://dr.example.com:8443
tls-cert: /etc/drfs/host.crt
tls-key: /etc/drfs/host.key
tls-ca: /etc/drfs/ca.crt
source-id: host-a
time-zone: UTC
compress: lz4
bandwidth: 50MiB/s
max-generation: 1GiB
allow-other: true
interval: 1m
retention: 7d
max-points: 100
rpo-warning: 1d12h
resync-window: 18:00-08:00,sat,sun
resync-threshold: 80%
vms:
  db:
    interval: 30s
    rpo-warning: 2m
  web:
    retention: 2h
    max-points: 0
    resync-window: always
    resync-threshold: 10
  cache: {}
`

func TestConfigEverySetting(t *testing.T) {
	c, err := ParseConfig("agent.yaml", []byte(fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{File: "agent.yaml", Source: "/srv/vms", Mountpoint: "/run/drfs/vms", State: "/var/lib/drfs",
		Target: "https://dr.example.com:8443", TLSCert: "/etc/drfs/host.crt", TLSKey: "/etc/drfs/host.key", TLSCA: "/etc/drfs/ca.crt",
		SourceID: "host-a", Compress: "lz4", Bandwidth: 50 << 20, MaxGeneration: 1 << 30, AllowOther: true, TimeZone: "UTC"}
	got := *c
	got.Location, got.Defaults, got.VMs = nil, Policy{}, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("agent settings:\n got %+v\nwant %+v", got, want)
	}
	if c.Location != time.UTC {
		t.Errorf("location %v", c.Location)
	}
	window := func(s string) Window {
		w, err := ParseWindow(s)
		if err != nil {
			t.Fatal(err)
		}
		return w.In(time.UTC)
	}
	def := Policy{Interval: time.Minute, Retention: 7 * 24 * time.Hour, MaxPoints: 100, RPOWarning: 36 * time.Hour,
		ResyncWindow: window("18:00-08:00,sat,sun"), ResyncThreshold: 80}
	if !reflect.DeepEqual(c.Defaults, def) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c.Defaults, def)
	}
	db, web, cache := def, def, def
	db.Interval, db.RPOWarning = 30*time.Second, 2*time.Minute
	web.Retention, web.MaxPoints, web.ResyncWindow, web.ResyncThreshold = 2*time.Hour, 0, window("always"), 10
	wantVMs := []VMConfig{{Name: "db", Policy: db, Line: 22}, {Name: "web", Policy: web, Line: 25}, {Name: "cache", Policy: cache, Line: 30}}
	if !reflect.DeepEqual(c.VMs, wantVMs) {
		t.Errorf("vms:\n got %+v\nwant %+v", c.VMs, wantVMs)
	}
	if p := c.PolicyFor("web"); !reflect.DeepEqual(p, web) {
		t.Errorf("PolicyFor(web) = %+v", p)
	}
	if p := c.PolicyFor("other"); !reflect.DeepEqual(p, def) {
		t.Errorf("PolicyFor(other) = %+v", p)
	}

	// Format reads back to the same configuration.
	c2, err := ParseConfig("agent.yaml", []byte(c.Format()))
	if err != nil {
		t.Fatalf("%v\n%s", err, c.Format())
	}
	for i := range c2.VMs {
		c2.VMs[i].Line = c.VMs[i].Line
	}
	if !reflect.DeepEqual(c, c2) {
		t.Errorf("Format does not read back:\n%s\n got %+v\nwant %+v", c.Format(), c2, c)
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := ParseConfig("agent.yaml", []byte("source: /a\nmountpoint: /b\nstate: /c\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.Defaults, DefaultPolicy()) || c.MaxGeneration != DefaultMaxGeneration ||
		c.Bandwidth != 0 || c.Compress != "" || c.AllowOther || c.Location != nil || len(c.VMs) != 0 {
		t.Errorf("defaults: %+v", c)
	}
}

// TestConfigErrors checks each kind of mistake, reported at its line.
func TestConfigErrors(t *testing.T) {
	const paths = "source: /a\nmountpoint: /b\nstate: /c\n"
	for _, tc := range []struct {
		name, text string
		want       []string // each error, in order
	}{
		{"unknown setting", paths + "colour: blue\n", []string{`agent.yaml:4: unknown setting "colour"`}},
		{"set twice", paths + "interval: 1m\ninterval: 2m\n", []string{"agent.yaml:5: interval is set twice (first at line 4)"}},
		{"a list for a value", paths + "interval: [1m]\n", []string{"agent.yaml:4: interval is one value, not a list"}},
		{"a mapping for a value", paths + "target:\n  url: dir:///x\n", []string{"agent.yaml:5: target is one value, not a mapping"}},
		{"no value", paths + "source-id:\ntls-ca: ''\n", []string{"agent.yaml:4: source-id has no value", "agent.yaml:5: tls-ca has no value"}},
		{"bad value", paths + "\ninterval: soon\nallow-other: yes\n", []string{
			`agent.yaml:5: interval "soon" is not a duration (such as 30s, 5m, 1h30m or 7d)`,
			`agent.yaml:6: allow-other "yes": use true or false`}},
		{"relative path", "source: a\nmountpoint: /b\nstate: /c\n", []string{`agent.yaml:1: source "a" is not an absolute path`}},
		{"out of range", paths + "interval: 1h\nretention: 30m\n", []string{"agent.yaml:5: retention 30m is out of range (interval 1h..30d)"}},
		{"missing", "source: /a\n", []string{"agent.yaml: mountpoint is not set", "agent.yaml: state is not set"}},
		{"vms not a mapping", paths + "vms: [db]\n", []string{"agent.yaml:4: vms is a mapping of VM name to settings, as in vms: {db: {interval: 30s}}, not a list"}},
		{"vm not a mapping", paths + "vms:\n  db: 30s\n  web: [a]\n", []string{
			`agent.yaml:5: vm db: its settings are a mapping, as in db: {interval: 30s}, not "30s"`,
			"agent.yaml:6: vm web: its settings are a mapping, as in web: {interval: 30s}, not a list"}},
		{"vm twice", paths + "vms:\n  db: {}\n  db: {}\n", []string{"agent.yaml:6: vm db is given twice (first at line 5)"}},
		{"vm name", paths + "vms:\n  ../x: {}\n", []string{`agent.yaml:5: vm name "../x" is not a single path element`}},
		{"agent setting under a vm", paths + "vms:\n  db:\n    target: dir:///x\n", []string{
			"agent.yaml:6: target is a setting of the agent: put it at the top level, not under vms"}},
		{"vm setting", paths + "vms:\n  db:\n    interval: 1d\n    retention: 1h\n    colour: red\n", []string{
			"agent.yaml:7: vm db: retention 1h is out of range (interval 24h..30d)",
			`agent.yaml:8: unknown setting "colour"`}},
		{"not a mapping", "- source: /a\n", []string{"agent.yaml:1: the configuration is a mapping of settings (name: value), not a list",
			"agent.yaml: source is not set", "agent.yaml: mountpoint is not set", "agent.yaml: state is not set"}},
		{"syntax", paths + "vms:\n  db: {interval: 1m\n", []string{"agent.yaml:5: not valid YAML: did not find expected ',' or '}'"}},
		{"two documents", paths + "---\nsource: /b\n", []string{"agent.yaml:4: a second YAML document (after ---): the configuration is one mapping of settings"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("agent.yaml", []byte(tc.text))
			if err == nil {
				t.Fatalf("no error")
			}
			var got []string
			for _, e := range unjoin(err) {
				var ce *ConfigError
				if !errors.As(e, &ce) || ce.File != "agent.yaml" {
					t.Errorf("not a ConfigError: %#v", e)
				}
				got = append(got, e.Error())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("errors:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// TestConfigOldFormat checks that a file in the format before YAML gets
// one error that says how to write it now.
func TestConfigOldFormat(t *testing.T) {
	for _, tc := range []struct {
		text     string
		line     int
		contains []string
	}{
		{"# drfs\nsource     = /srv/vms\nmountpoint = /mnt\n", 2, []string{`write "source: /srv/vms"`, "vms: {db: {interval: 30s}}"}},
		{"source: /a\nmountpoint: /b\nstate: /c\n\n[vm db]\ninterval: 30s\n", 5, []string{"vms: {db: {interval: 30s}}", `"name: value"`}},
		{"source: /a\nmountpoint: /b\n  state=/c\n", 3, []string{`write "state: /c"`}},
	} {
		_, err := ParseConfig("my.conf", []byte(tc.text))
		errs := unjoin(err)
		var ce *ConfigError
		if len(errs) != 1 || !errors.As(errs[0], &ce) || ce.Line != tc.line || !strings.Contains(ce.Msg, "the configuration is YAML now") {
			t.Errorf("%q: %v", tc.text, err)
			continue
		}
		for _, s := range tc.contains {
			if !strings.Contains(ce.Msg, s) {
				t.Errorf("%q: %q does not say %q", tc.text, ce.Msg, s)
			}
		}
	}
}

// TestConfigFormatQuotes checks that values and VM names YAML would read
// as something else than the string are quoted.
func TestConfigFormatQuotes(t *testing.T) {
	c := &Config{File: "x", Source: "/a: b", Mountpoint: "/b #c", State: "/[c]", SourceID: "null",
		Compress: "none", Bandwidth: shipper.Bandwidth(12345), MaxGeneration: 0, Defaults: DefaultPolicy()}
	for _, name := range []string{"true", "123", "~", "<<", "-x", "a: b", "&a", "'q'", "é"} {
		c.VMs = append(c.VMs, VMConfig{Name: name, Policy: DefaultPolicy()})
	}
	out := c.Format()
	c2, err := ParseConfig("x", []byte(out))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for i := range c2.VMs {
		c2.VMs[i].Line = 0
	}
	if !reflect.DeepEqual(c, c2) {
		t.Errorf("Format does not read back:\n%s\n got %+v\nwant %+v", out, c2, c)
	}
}
