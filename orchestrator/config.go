package orchestrator

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/shipper"
)

// Config is the agent's configuration: where the disks are, where they
// replicate to, and the policy of every VM.
//
// The file is YAML, a mapping of settings:
//
//	# drfs agent configuration
//	source: /srv/vms
//	mountpoint: /run/drfs/vms
//	state: /var/lib/drfs
//	target: https://dr.example.com:8443
//	tls-cert: /etc/drfs/host.crt
//	tls-key: /etc/drfs/host.key
//	tls-ca: /etc/drfs/ca.crt
//
//	interval: 5m
//	retention: 7d
//	rpo-warning: 15m
//	resync-window: 18:00-08:00,sat,sun
//	resync-threshold: 50%
//
//	vms:
//	  db:
//	    interval: 30s
//
// Names are lower case. The settings at the top level are the agent's and
// the defaults of every VM; the mapping under vms overrides the VM settings
// for the VM of each name (its folder, or one-disk file, in source): a VM
// with nothing under its name (db: or db: {}) has the defaults. A setting
// may be given once in each mapping. A value is one scalar, quoted or not
// (a path with ": " or " #" in it needs quotes); an empty one is a mistake.
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
//	vms         the VMs whose settings differ from the defaults: a mapping
//	            of VM name to VM settings
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
//
// The agent read "name = value" lines and [vm NAME] sections before: a
// file in that format is refused with one error that says how to write it
// in YAML.
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

	// Defaults is the policy of VMs not under vms.
	Defaults Policy
	// VMs are those under vms, in file order, with the defaults applied.
	VMs []VMConfig
}

// VMConfig is the policy of one VM.
type VMConfig struct {
	Name   string
	Policy Policy
	Line   int // of its name under vms
}

// PolicyFor returns the policy of vm: its own under vms, or the defaults.
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
// its line, joined with errors.Join: unknown settings, settings given
// twice, values of the wrong kind or out of range, missing settings. A
// file that is not valid YAML, or is in the format before YAML, gets one
// error, at the line where that shows.
func ParseConfig(file string, data []byte) (*Config, error) {
	p := &configParser{c: &Config{File: file, Defaults: DefaultPolicy(), MaxGeneration: DefaultMaxGeneration}}
	p.parse(data)
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
	vms    []*section   // in file order
	lines  []string     // of the text
	old    *ConfigError // a line in the format before YAML
}

// section is the agent's settings (name "") or the settings of a VM under
// vms.
type section struct {
	name   string
	line   int
	set    map[string]int // setting → line of its name
	policy *Policy
}

// setting parses one value into the section (or the config).
type setting struct {
	agent bool // only at the top level, not under vms
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
	// yaml.v3 counts the end of the text as a line further.
	last := len(p.lines)
	if last > 1 && strings.TrimSpace(p.lines[last-1]) == "" {
		last--
	}
	line = min(line, last)
	p.errs = append(p.errs, &ConfigError{File: p.c.File, Line: line, Msg: fmt.Sprintf(format, args...)})
}

func (p *configParser) parse(data []byte) {
	c := p.c
	p.global = &section{set: map[string]int{}, policy: &c.Defaults}
	p.lines = strings.Split(string(data), "\n")
	if line, msg := badText(p.lines); line > 0 {
		p.errorf(line, "%s", msg)
		return
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	err := dec.Decode(&doc)
	var root *yaml.Node
	if err == nil && len(doc.Content) > 0 {
		root = deref(doc.Content[0])
	}
	// A file in the format before YAML is not YAML, or YAML of another
	// shape: a text of lines, a list ([vm NAME]).
	if err != nil && !errors.Is(err, io.EOF) || root != nil && root.Kind != yaml.MappingNode && root.ShortTag() != "!!null" {
		if line, msg := oldFormat(p.lines); line > 0 {
			p.errorf(line, "%s", msg)
			return
		}
	}
	if err == nil {
		var next yaml.Node
		switch err2 := dec.Decode(&next); {
		case err2 == nil:
			p.errorf(next.Line, "a second YAML document (after ---): the configuration is one mapping of settings")
			return
		case !errors.Is(err2, io.EOF):
			err = err2
		}
	}
	switch {
	case errors.Is(err, io.EOF):
		// Empty, or comments only: the required settings are missing.
	case err != nil:
		p.yamlError(err)
		return
	case root != nil:
		p.top(root)
		if p.old != nil {
			p.errs = []*ConfigError{p.old} // what follows from it would confuse
			return
		}
	}

	for _, k := range []string{"source", "mountpoint", "state"} {
		if _, ok := p.global.set[k]; !ok {
			p.errorf(0, "%s is not set", k)
		}
	}
	p.checkPolicy(p.global)
	for _, s := range p.vms {
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

// yamlErr splits the errors of yaml.v3: "yaml: line N: problem", or
// "yaml: problem" when it knows no line.
var yamlErr = regexp.MustCompile(`(?s)^yaml: (?:line (\d+): )?(.*)$`)

// yamlError reports a YAML syntax error, at its line: yaml.v3's, counted
// from 1 (it counts a parser's errors from 0 and leaves out line 1), or
// found in the text where yaml.v3 gives none. A tab in an indentation is
// the likeliest mistake, and yaml.v3 reports it at another line.
func (p *configParser) yamlError(err error) {
	msg, line := err.Error(), 0
	if m := yamlErr.FindStringSubmatch(msg); m != nil {
		msg = m[2]
		line, _ = strconv.Atoi(m[1])
	}
	lines := p.lines
	for i, l := range lines {
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		if rest := strings.TrimSpace(l); strings.Contains(indent, "\t") && rest != "" && rest[0] != '#' {
			p.errorf(i+1, "not valid YAML: a tab in the indentation (YAML indents with spaces)")
			return
		}
	}
	switch {
	case strings.HasPrefix(msg, "did not find expected ',' or"), strings.HasPrefix(msg, "did not find expected '-' indicator"),
		strings.HasPrefix(msg, "did not find expected <"), msg == "did not find expected key", msg == "did not find expected node content",
		strings.HasPrefix(msg, "found duplicate %"), msg == "found incompatible YAML document", msg == "found undefined tag handle":
		line++ // a parser's error, at a line counted from 0
	case line > 0:
	case strings.HasPrefix(msg, "unknown anchor '"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		for i, l := range lines {
			if strings.Contains(l, "*"+name) {
				line = i + 1
				break
			}
		}
	case strings.HasPrefix(msg, "did not find"), strings.HasPrefix(msg, "could not find"), strings.HasPrefix(msg, "found "),
		strings.HasSuffix(msg, "are not allowed in this context"):
		line = 1 // a scanner's error on the first line
	}
	p.errorf(line, "not valid YAML: %s", msg)
}

// badText finds the first line that is not valid UTF-8, or holds a
// control character or a line break that is not a line feed (which YAML
// counts as the end of a line where other tools do not, and the line
// numbers of errors would not match); 0 when there is none.
func badText(lines []string) (int, string) {
	for i, line := range lines {
		if !utf8.ValidString(line) {
			return i + 1, "the line is not valid UTF-8"
		}
		for _, r := range strings.TrimSuffix(line, "\r") {
			switch {
			case r == '\r' || r == '\u0085' || r == '\u2028' || r == '\u2029':
				return i + 1, fmt.Sprintf("a line break other than a line feed (%U): end lines with \\n or \\r\\n", r)
			case r != '\t' && (r < ' ' || r >= 0x7f && r < 0xa0 || r == 0xfffe || r == 0xffff):
				return i + 1, fmt.Sprintf("control character %U: write it as an escape in a double-quoted string, if at all", r)
			}
		}
	}
	return 0, ""
}

// The lines of the format before YAML: "name = value" and "[vm NAME]".
var (
	oldSetting = regexp.MustCompile(`^\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(.*?)\s*$`)
	oldSection = regexp.MustCompile(`^\s*\[\s*vm(\s+([^\]]*?))?\s*\]?\s*$`)
)

// oldFormat finds the first line in the format of the configuration before
// YAML, and returns it with a message on how to write it now; 0 when there
// is none.
func oldFormat(lines []string) (int, string) {
	for i, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		if m := oldSetting.FindStringSubmatch(line); m != nil {
			return i + 1, fmt.Sprintf("%q is in the format before YAML: the configuration is YAML now, write %q "+
				"(and the settings of a VM under vms, as in vms: {db: {interval: 30s}}, rather than in a [vm db] section)",
				strings.TrimSpace(line), m[1]+": "+m[2])
		}
		if m := oldSection.FindStringSubmatch(line); m != nil {
			name := cmp.Or(m[2], "NAME")
			return i + 1, fmt.Sprintf("%q is in the format before YAML: the configuration is YAML now, "+
				"put the settings of a VM under vms, as in vms: {%s: {interval: 30s}} (and write a setting as \"name: value\" rather than \"name = value\")",
				strings.TrimSpace(line), name)
		}
	}
	return 0, ""
}

// isControl reports a control character or line break other than a tab,
// which no setting or VM name holds.
func isControl(r rune) bool {
	return r != '\t' && (unicode.IsControl(r) || r == '\u2028' || r == '\u2029')
}

// kindName names the kind of a YAML node in error messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "a document"
}

// deref returns the node an alias stands for.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// entries calls fn with each key and value of mapping n, reporting a key
// that is not a name or is given twice.
func (p *configParser) entries(n *yaml.Node, what string, fn func(key string, k, v *yaml.Node)) {
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k.Line, "%s: a name is a single word, not %s", what, kindName(k))
			continue
		}
		if !utf8.ValidString(k.Value) || strings.ContainsFunc(k.Value, isControl) {
			p.errorf(k.Line, "%s: the name %q is not valid UTF-8 or has a control character", what, k.Value)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			if what == "vms" {
				p.errorf(k.Line, "vm %s is given twice (first at line %d)", k.Value, first)
			} else {
				p.errorf(k.Line, "%s is set twice (first at line %d)", k.Value, first)
			}
			continue
		}
		seen[k.Value] = k.Line
		fn(k.Value, k, v)
	}
}

// top reads the root of the document: the agent's settings and vms.
func (p *configParser) top(n *yaml.Node) {
	n = deref(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // an empty document: the required settings are missing
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, "the configuration is a mapping of settings (name: value), not %s", kindName(n))
		return
	}
	p.entries(n, "the configuration", func(key string, k, v *yaml.Node) {
		if key == "vms" {
			p.vmsMapping(v)
			return
		}
		p.setting(p.global, key, k, v)
	})
}

// vmsMapping reads the settings of each VM under vms.
func (p *configParser) vmsMapping(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // no VM of its own
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, "vms is a mapping of VM name to settings, as in vms: {db: {interval: 30s}}, not %s", kindName(n))
		return
	}
	p.entries(n, "vms", func(name string, k, v *yaml.Node) {
		switch {
		case name == "":
			p.errorf(k.Line, "vms: a VM name is empty")
			return
		case checkVMName(name) != nil:
			p.errorf(k.Line, "%v", checkVMName(name))
			return
		}
		pol := p.c.Defaults
		s := &section{name: name, line: k.Line, set: map[string]int{}, policy: &pol}
		p.vms = append(p.vms, s)
		switch {
		case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null":
			// The defaults.
		case v.Kind != yaml.MappingNode:
			p.errorf(v.Line, "vm %s: its settings are a mapping, as in %s: {interval: 30s}, not %s", name, yamlKey(name), kindName(v))
		default:
			p.entries(v, "vm "+name, func(key string, k, v *yaml.Node) { p.setting(s, key, k, v) })
		}
	})
}

// continued reports whether the plain scalar v goes on over more than its
// line.
func (p *configParser) continued(v *yaml.Node) bool {
	if v.Line < 1 || v.Line > len(p.lines) {
		return false
	}
	line := []rune(p.lines[v.Line-1])
	return v.Column < 1 || v.Column > len(line) || !strings.Contains(string(line[v.Column-1:]), v.Value)
}

// yamlKey writes name as a YAML key for a message.
func yamlKey(name string) string {
	out, err := yaml.Marshal(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: name})
	if err != nil || bytes.Count(out, []byte("\n")) > 1 {
		return strconv.Quote(name)
	}
	return strings.TrimSuffix(string(out), "\n")
}

// setting parses the setting key (k its name, v its value) into s.
func (p *configParser) setting(s *section, key string, k, v *yaml.Node) {
	set, known := settings[key]
	switch {
	case !known:
		p.errorf(k.Line, "unknown setting %q", key)
		return
	case set.agent && s != p.global:
		p.errorf(k.Line, "%s is a setting of the agent: put it at the top level, not under vms", key)
		return
	}
	s.set[key] = k.Line
	switch {
	case v.Kind != yaml.ScalarNode:
		p.errorf(v.Line, "%s is one value, not %s", key, kindName(v))
	case v.ShortTag() == "!!null" || strings.TrimSpace(v.Value) == "":
		p.errorf(v.Line, "%s has no value", key)
	case !utf8.ValidString(v.Value):
		p.errorf(v.Line, "%s: the value is not valid UTF-8", key)
	case strings.ContainsFunc(v.Value, isControl):
		p.errorf(v.Line, "%s: the value has a control character or line break", key)
	case v.Style == 0 && p.continued(v):
		// A line indented too far continues the value above it.
		if line, msg := oldFormat(p.lines[v.Line:]); line > 0 {
			p.errorf(v.Line+line, "%s", msg)
			p.old = p.errs[len(p.errs)-1]
		} else {
			p.errorf(v.Line, "%s %q goes on over the next line: a setting is one line (name: value), indented as the others", key, v.Value)
		}
	default:
		if err := set.parse(p.c, s.policy, v.Value); err != nil {
			p.errorf(v.Line, "%v", err)
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

// Format writes c in the file format, YAML: ParseConfig reads it back to
// the same Config. Under vms, a VM holds the settings that differ from the
// defaults.
func (c *Config) Format() string {
	root := &yaml.Node{Kind: yaml.MappingNode}
	// add appends a setting to m; tag is !!str for a value as the user
	// wrote it, which is quoted when YAML would read it as something else,
	// and "" for one of ours, which is written plain.
	add := func(m *yaml.Node, key, tag, value string) {
		if value != "" {
			m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key},
				&yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value})
		}
	}
	for _, kv := range [][2]string{{"source", c.Source}, {"mountpoint", c.Mountpoint}, {"state", c.State},
		{"target", c.Target}, {"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}, {"tls-ca", c.TLSCA},
		{"source-id", c.SourceID}, {"time-zone", c.TimeZone}, {"compress", c.Compress}} {
		add(root, kv[0], "!!str", kv[1])
	}
	if c.AllowOther {
		add(root, "allow-other", "", "true")
	}
	if c.Bandwidth > 0 {
		add(root, "bandwidth", "", bandwidthSetting(c.Bandwidth))
	}
	switch {
	case c.MaxGeneration == 0:
		add(root, "max-generation", "", "0")
	case c.MaxGeneration != DefaultMaxGeneration:
		add(root, "max-generation", "", strings.TrimSuffix(bandwidthSetting(shipper.Bandwidth(c.MaxGeneration)), "/s"))
	}
	def := policySettings(c.Defaults)
	for _, l := range def {
		if l[0] != "rpo-warning" || c.Defaults.RPOWarning != 0 {
			add(root, l[0], "", l[1])
		}
	}
	if len(c.VMs) > 0 {
		vms := &yaml.Node{Kind: yaml.MappingNode}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "vms"}, vms)
		for _, vm := range c.VMs {
			m := &yaml.Node{Kind: yaml.MappingNode}
			vms.Content = append(vms.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: vm.Name}, m)
			for i, l := range policySettings(vm.Policy) {
				if l != def[i] {
					add(m, l[0], "", l[1])
				}
			}
		}
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		panic(err) // the nodes are scalars and mappings of scalars
	}
	enc.Close()
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
