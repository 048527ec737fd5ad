package orchestrator

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/shipper"
)

// Config is the agent's configuration: where the disks are, where they
// replicate to, and the policy of every VM.
//
// The file is plain text, one setting per line:
//
//	# drfs agent configuration
//	source     = /srv/vms
//	mountpoint = /run/drfs/vms
//	state      = /var/lib/drfs
//	target     = https://dr.example.com:8443
//	tls-cert   = /etc/drfs/host.crt
//	tls-key    = /etc/drfs/host.key
//	tls-ca     = /etc/drfs/ca.crt
//
//	interval         = 5m
//	retention        = 7d
//	rpo-warning      = 15m
//	resync-window    = 18:00-08:00,sat,sun
//	resync-threshold = 50%
//
//	[vm db]
//	interval = 30s
//
// A line is "name = value", a section header "[vm NAME]", blank, or a
// comment starting with #. Names are lower case; spaces around names and
// values do not count; there are no quotes and no comments after a value.
// Settings before the first section are the agent's and the defaults of
// every VM; a [vm NAME] section overrides the VM settings for the VM of
// that name (its folder, or one-disk file, in source). A setting may be
// given once per section.
//
// Agent settings:
//
//	source      directory of disk images (absolute path; required)
//	mountpoint  where the tracked view of source is mounted (absolute; required)
//	state       directory of the change log and the agent's state (absolute; required)
//	target      URL of the recovery site: dir:///path or https://host:port
//	tls-cert, tls-key, tls-ca
//	            PEM files for an https:// target (absolute paths)
//	source-id   this host's identity on the target (default: the host name)
//	time-zone   zone the resync windows are read in, e.g. Europe/Paris (default: local)
//	compress    LZ4 on what is shipped: auto (for a target reached over a
//	            network, not a dir:// one), lz4 or none (default: auto)
//	bandwidth   upload limit to each target, e.g. 50MiB/s (default: 0, none)
//	max-generation
//	            a protected VM's generation is cut before its interval when
//	            it holds this much changed data, 1MiB to 1TiB, or 0 to cut
//	            only at the interval (default: 256MiB)
//	allow-other true to let users other than root open the disks on the
//	            mount, with their file modes checked: a hypervisor that
//	            runs its VMs as its own user (libvirt's QEMU) needs it
//	            (default: false)
//
// VM settings (defaults in brackets):
//
//	interval          replication interval, 30s to 24h [5m]
//	retention         how long recovery points are kept, interval to 30d [24h]
//	max-points        keep at most this many points, 0 for no limit [0]
//	rpo-warning       health turns Warning when the newest point is older,
//	                  interval to 7d [twice the interval]
//	resync-window     when resynchronizations run (see Window) [18:00-08:00,sat,sun]
//	resync-threshold  a change log this big, in percent of its disk, turns
//	                  into a resynchronization, 1% to 100% [50%]
//
// Durations are Go durations (90s, 5m, 1h30m), optionally after a number of
// days: 7d, 1d12h.
type Config struct {
	// File names the configuration in error messages.
	File string

	Source, Mountpoint, State string
	Target                    string
	TLSCert, TLSKey, TLSCA    string
	SourceID                  string
	// Compress is the LZ4 choice for what is shipped: "auto" (or ""),
	// "lz4" or "none".
	Compress string
	// Bandwidth limits the upload to each target; 0 means no limit.
	Bandwidth shipper.Bandwidth
	// MaxGeneration is the changed data at which a protected VM's
	// generation is cut before its interval: a point of that much data
	// ships and applies in seconds, where a whole interval of heavy writes
	// would take longer than the interval. 0 cuts only at the interval.
	MaxGeneration int64
	// AllowOther mounts with allow_other and default_permissions: users
	// other than root may open the mount's files, as their modes allow.
	AllowOther bool
	// TimeZone is as written ("" for local time); Location is its zone,
	// in which every policy's ResyncWindow is read.
	TimeZone string
	Location *time.Location

	// Defaults is the policy of VMs without a section.
	Defaults Policy
	// VMs are the [vm] sections in file order, with the defaults applied.
	VMs []VMConfig
}

// VMConfig is the policy of one VM.
type VMConfig struct {
	Name   string
	Policy Policy
	Line   int // of the section header
}

// PolicyFor returns the policy of vm: its section's, or the defaults.
func (c *Config) PolicyFor(vm string) Policy {
	for _, v := range c.VMs {
		if v.Name == vm {
			return v.Policy
		}
	}
	return c.Defaults
}

// ConfigError is one mistake in a configuration file, at Line (0 when it
// concerns the file as a whole, such as a missing setting).
type ConfigError struct {
	File string
	Line int
	Msg  string
}

func (e *ConfigError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
}

// LoadConfig reads and parses the configuration file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// maxConfigErrors bounds the errors one parse reports.
const maxConfigErrors = 20

// ParseConfig parses a configuration; file names it in error messages.
// It reports every mistake it finds (up to 20), each a *ConfigError with
// its line, joined with errors.Join.
func ParseConfig(file string, data []byte) (*Config, error) {
	p := &configParser{c: &Config{File: file, Defaults: DefaultPolicy(), MaxGeneration: DefaultMaxGeneration}}
	p.parse(string(data))
	if len(p.errs) > 0 {
		// In line order; those of the whole file last.
		slices.SortStableFunc(p.errs, func(a, b *ConfigError) int {
			la, lb := a.Line, b.Line
			if la == 0 {
				la = math.MaxInt
			}
			if lb == 0 {
				lb = math.MaxInt
			}
			return cmp.Compare(la, lb)
		})
		if len(p.errs) > maxConfigErrors {
			n := len(p.errs) - maxConfigErrors
			p.errs = append(p.errs[:maxConfigErrors], &ConfigError{File: file, Msg: fmt.Sprintf("and %d more", n)})
		}
		errs := make([]error, len(p.errs))
		for i, e := range p.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return p.c, nil
}

type configParser struct {
	c      *Config
	errs   []*ConfigError
	global *section
}

// section is the agent's settings (name "") or a [vm NAME] section.
type section struct {
	name   string
	line   int
	set    map[string]int // setting → line
	policy *Policy
}

// setting parses one value into the section (or the config).
type setting struct {
	agent bool // only before the first section
	parse func(c *Config, p *Policy, value string) error
}

var settings = map[string]setting{
	"source":     {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.Source, "source", v) }},
	"mountpoint": {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.Mountpoint, "mountpoint", v) }},
	"state":      {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.State, "state", v) }},
	"tls-cert":   {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.TLSCert, "tls-cert", v) }},
	"tls-key":    {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.TLSKey, "tls-key", v) }},
	"tls-ca":     {agent: true, parse: func(c *Config, _ *Policy, v string) error { return absPath(&c.TLSCA, "tls-ca", v) }},
	"source-id":  {agent: true, parse: func(c *Config, _ *Policy, v string) error { c.SourceID = v; return nil }},
	"bandwidth": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		b, err := shipper.ParseBandwidth(v)
		if err != nil {
			return fmt.Errorf("bandwidth %q: want a rate like 50MiB/s, 1GB/s or 0 for no limit", v)
		}
		c.Bandwidth = b
		return nil
	}},
	"max-generation": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		n, err := shipper.ParseBandwidth(v)
		if err != nil || strings.HasSuffix(v, "/s") {
			return fmt.Errorf("max-generation %q: want a size like 512MiB or 1GiB, or 0 to cut only at the interval", v)
		}
		if n != 0 && (n < MinMaxGeneration || n > MaxMaxGeneration) {
			return fmt.Errorf("max-generation %s is out of range (1MiB..1TiB, or 0 to cut only at the interval)", v)
		}
		c.MaxGeneration = int64(n)
		return nil
	}},
	"compress": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		switch v {
		case "auto", "lz4", "none":
			c.Compress = v
			return nil
		}
		return fmt.Errorf("compress %q: use auto, lz4 or none", v)
	}},
	"allow-other": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		switch v {
		case "true", "false":
			c.AllowOther = v == "true"
			return nil
		}
		return fmt.Errorf("allow-other %q: use true or false", v)
	}},
	"target": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		u, err := url.Parse(v)
		if err != nil || u.Scheme == "" {
			return fmt.Errorf("target %q is not a URL: give dir:///path or https://host:port", v)
		}
		c.Target = v
		return nil
	}},
	"time-zone": {agent: true, parse: func(c *Config, _ *Policy, v string) error {
		loc, err := time.LoadLocation(v)
		if err != nil || v == "" {
			return fmt.Errorf("time-zone %q is not a known zone (such as UTC, Local or Europe/Paris)", v)
		}
		c.TimeZone, c.Location = v, loc
		return nil
	}},
	"interval": {parse: func(_ *Config, p *Policy, v string) error {
		return parseDuration(&p.Interval, "interval", v)
	}},
	"retention": {parse: func(_ *Config, p *Policy, v string) error {
		return parseDuration(&p.Retention, "retention", v)
	}},
	"rpo-warning": {parse: func(_ *Config, p *Policy, v string) error {
		return parseDuration(&p.RPOWarning, "rpo-warning", v)
	}},
	"max-points": {parse: func(_ *Config, p *Policy, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("max-points %q is not a whole number", v)
		}
		p.MaxPoints = n
		return nil
	}},
	"resync-window": {parse: func(_ *Config, p *Policy, v string) error {
		w, err := ParseWindow(v)
		if err != nil {
			return err
		}
		p.ResyncWindow = w
		return nil
	}},
	"resync-threshold": {parse: func(_ *Config, p *Policy, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(v, "%")))
		if err != nil {
			return fmt.Errorf("resync-threshold %q is not a percentage (such as 50%%)", v)
		}
		if n < 1 || n > 100 {
			return fmt.Errorf("resync-threshold %d%% is out of range (1%%..100%%)", n)
		}
		p.ResyncThreshold = n
		return nil
	}},
}

// policyKeys are the keys of Policy.check's errors, in its order.
var policyKeys = [5]string{"interval", "retention", "max-points", "rpo-warning", "resync-threshold"}

func (p *configParser) errorf(line int, format string, args ...any) {
	p.errs = append(p.errs, &ConfigError{File: p.c.File, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (p *configParser) parse(text string) {
	c := p.c
	p.global = &section{set: map[string]int{}, policy: &c.Defaults}
	cur := p.global
	var sections []*section
	byName := map[string]*section{}
	for i, raw := range strings.Split(text, "\n") {
		n := i + 1
		line := strings.TrimSpace(strings.TrimSuffix(raw, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		if !utf8.ValidString(line) {
			p.errorf(n, "the line is not valid UTF-8")
			continue
		}
		if line[0] == '[' {
			inner, ok := strings.CutSuffix(line[1:], "]")
			kind, name, _ := strings.Cut(strings.TrimSpace(inner), " ")
			name = strings.TrimSpace(name)
			if !ok || kind != "vm" || name == "" {
				p.errorf(n, "%s is not a section header: write [vm NAME]", line)
				cur = &section{set: map[string]int{}, policy: &Policy{}} // parse on, keep nothing
				continue
			}
			if err := checkVMName(name); err != nil {
				p.errorf(n, "%v", err)
			}
			if prev := byName[name]; prev != nil {
				p.errorf(n, "vm %s has a section already (line %d)", name, prev.line)
				cur = &section{set: map[string]int{}, policy: &Policy{}}
				continue
			}
			pol := c.Defaults
			cur = &section{name: name, line: n, set: map[string]int{}, policy: &pol}
			sections = append(sections, cur)
			byName[name] = cur
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			p.errorf(n, "%q is not a setting: write name = value", line)
			continue
		}
		s, known := settings[key]
		switch {
		case !known:
			p.errorf(n, "unknown setting %q", key)
			continue
		case value == "":
			p.errorf(n, "%s has no value", key)
			continue
		case s.agent && cur != p.global:
			p.errorf(n, "%s is a setting of the agent: put it before the first [vm] section", key)
			continue
		}
		if first, dup := cur.set[key]; dup {
			p.errorf(n, "%s is set twice (first at line %d)", key, first)
			continue
		}
		cur.set[key] = n
		if err := s.parse(c, cur.policy, value); err != nil {
			p.errorf(n, "%v", err)
		}
	}

	for _, k := range []string{"source", "mountpoint", "state"} {
		if _, ok := p.global.set[k]; !ok {
			p.errorf(0, "%s is not set", k)
		}
	}
	p.checkPolicy(p.global)
	for _, s := range sections {
		p.checkPolicy(s)
		c.VMs = append(c.VMs, VMConfig{Name: s.name, Policy: *s.policy, Line: s.line})
	}
	if c.Location != nil {
		c.Defaults.ResyncWindow = c.Defaults.ResyncWindow.In(c.Location)
		for i := range c.VMs {
			c.VMs[i].Policy.ResyncWindow = c.VMs[i].Policy.ResyncWindow.In(c.Location)
		}
	}
}

// checkPolicy reports the range errors of a section's policy at the line
// of the setting, or of the interval it is measured against. A VM section
// reports only what it set itself: the rest was reported with the agent's
// settings.
func (p *configParser) checkPolicy(s *section) {
	errs := s.policy.check()
	for i, err := range errs {
		if err == nil {
			continue
		}
		key := policyKeys[i]
		line, own := s.set[key]
		if !own && errs[0] != nil {
			continue // measured against an interval that is wrong itself
		}
		if !own {
			line, own = s.set["interval"]
		}
		if !own && s != p.global {
			continue
		}
		if !own {
			line = p.global.set[key]
		}
		if s.name != "" {
			p.errorf(line, "vm %s: %v", s.name, err)
		} else {
			p.errorf(line, "%v", err)
		}
	}
}

func absPath(dst *string, key, v string) error {
	if !filepath.IsAbs(v) {
		return fmt.Errorf("%s %q is not an absolute path", key, v)
	}
	*dst = filepath.Clean(v)
	return nil
}

// parseDuration parses a duration (units.ParseDuration: 30s, 7d, 1d12h).
func parseDuration(dst *time.Duration, key, v string) error {
	d, err := units.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("%s %q is not a duration (such as 30s, 5m, 1h30m or 7d)", key, v)
	}
	*dst = d
	return nil
}

// checkVMName applies the target's rules for a VM name: one path element.
func checkVMName(name string) error {
	switch {
	case len(name) > 255:
		return fmt.Errorf("vm name %.20q... is longer than 255 bytes", name)
	case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("vm name %q is not a single path element", name)
	}
	return nil
}

// Format writes c in the file format: ParseConfig reads it back to the
// same Config. A VM section holds the settings that differ from the
// defaults.
func (c *Config) Format() string {
	var b strings.Builder
	kv := func(k, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s = %s\n", k, v)
		}
	}
	kv("source", c.Source)
	kv("mountpoint", c.Mountpoint)
	kv("state", c.State)
	kv("target", c.Target)
	kv("tls-cert", c.TLSCert)
	kv("tls-key", c.TLSKey)
	kv("tls-ca", c.TLSCA)
	kv("source-id", c.SourceID)
	kv("time-zone", c.TimeZone)
	kv("compress", c.Compress)
	if c.AllowOther {
		kv("allow-other", "true")
	}
	if c.Bandwidth > 0 {
		kv("bandwidth", bandwidthSetting(c.Bandwidth))
	}
	switch {
	case c.MaxGeneration == 0:
		kv("max-generation", "0")
	case c.MaxGeneration != DefaultMaxGeneration:
		kv("max-generation", strings.TrimSuffix(bandwidthSetting(shipper.Bandwidth(c.MaxGeneration)), "/s"))
	}
	def := policySettings(c.Defaults)
	for _, l := range def {
		if l[0] != "rpo-warning" || c.Defaults.RPOWarning != 0 {
			kv(l[0], l[1])
		}
	}
	for _, vm := range c.VMs {
		fmt.Fprintf(&b, "\n[vm %s]\n", vm.Name)
		for i, l := range policySettings(vm.Policy) {
			if l != def[i] {
				kv(l[0], l[1])
			}
		}
	}
	return b.String()
}

// Default and limits of Config.MaxGeneration.
const (
	DefaultMaxGeneration = 256 << 20
	MinMaxGeneration     = 1 << 20
	MaxMaxGeneration     = 1 << 40
)

// bandwidthSetting writes b so that it parses back to b: in a unit when
// that is exact, else in bytes per second.
func bandwidthSetting(b shipper.Bandwidth) string {
	if v, err := shipper.ParseBandwidth(b.String()); err == nil && v == b {
		return b.String()
	}
	return strconv.FormatInt(int64(b), 10) + "B/s"
}

// policySettings returns the settings of p as name and value.
func policySettings(p Policy) [][2]string {
	return [][2]string{
		{"interval", fmtDuration(p.Interval)},
		{"retention", fmtDuration(p.Retention)},
		{"max-points", strconv.Itoa(p.MaxPoints)},
		{"rpo-warning", fmtDuration(p.RPOWarning)},
		{"resync-window", p.ResyncWindow.String()},
		{"resync-threshold", strconv.Itoa(p.Threshold()) + "%"},
	}
}
