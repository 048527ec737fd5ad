package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"regexp"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
)

// socketFlag locates the agent for the commands that talk to it.
type socketFlag struct {
	Socket string `default:"/run/drfs/agent.sock" env:"DRFS_SOCKET" placeholder:"PATH" help:"Control socket of the drfs agent." type:"path"`
}

// agentCmd runs the agent: the tracking mount, the change log, and the
// protection of every VM that drfs protect names.
type agentCmd struct {
	Config string `placeholder:"FILE" type:"existingfile" help:"Configuration file (see docs/agent.md). Without it, give --source, --mountpoint and --state."`

	Source        string `placeholder:"DIR" type:"path" help:"Directory of disk images: each top-level folder is a VM, each file inside it a disk."`
	Mountpoint    string `placeholder:"DIR" type:"path" help:"Where the tracked view of SOURCE is mounted; run the VMs from here."`
	State         string `placeholder:"DIR" type:"path" help:"Directory of the change log and the agent's state (keep it off the mount)."`
	Target        string `placeholder:"URL" help:"Default target of drfs protect: dir:///path, https://host:port or azblob://ACCOUNT/CONTAINER."`
	SourceID      string `name:"source-id" placeholder:"NAME" help:"Identity of this host on the target (default: the host name)."`
	Interval      string `placeholder:"DURATION" help:"Default replication interval (5m unless set)."`
	Retention     string `placeholder:"DURATION" help:"Default retention of recovery points (24h unless set)."`
	ResyncWindow  string `name:"resync-window" placeholder:"SPEC" help:"When resynchronizations run: e.g. 18:00-08:00,sat,sun (the default), always, never."`
	ResyncThresh  string `name:"resync-threshold" placeholder:"PCT" help:"Drop a VM's change log and compare its disks from a snapshot instead (in the resync window) when a disk's log reaches this share of its size, a disk under 1 GiB counted as 1 GiB (default 50%)."`
	Bandwidth     string `placeholder:"RATE" help:"Upload limit to each target, shared by the VMs replicating there, e.g. 50MiB/s (default: none)."`
	Compress      string `placeholder:"MODE" help:"LZ4 on what is shipped: auto (the default: for a target reached over a network, not for a dir:// one), lz4 or none."`
	MaxGeneration string `name:"max-generation" placeholder:"SIZE" help:"Cut the generation of a protected VM before its interval when it holds this much changed data, so that heavy writes still make a point every few seconds (default 256MiB; 0 cuts only at the interval)."`
	AllowOther    bool   `name:"allow-other" help:"Let users other than root open the disks on the mount, as their file modes allow (libvirt runs QEMU as its own user: docs/libvirt.md)."`
	targets.TLS

	socketFlag
	logFlags
	MetricsListen string `name:"metrics-listen" placeholder:"ADDR" help:"Serve Prometheus metrics on this address, e.g. 127.0.0.1:9477."`
	BlockSize     int    `default:"4096" help:"Tracking block size in bytes (fixed when the state directory is created)."`
	activityFlags
}

// settingFlags are the agent's flags that stand for configuration
// settings: given on the command line, they conflict with --config.
var settingFlags = []string{"source", "mountpoint", "state", "target", "source-id", "interval", "retention",
	"resync-window", "resync-threshold", "bandwidth", "compress", "max-generation", "allow-other", "tls-cert", "tls-key", "tls-ca"}

// config returns the agent's configuration: the file's, or one made of the
// flags and checked by the same rules. given lists the flags of the
// command line: with --config, a setting flag there is a mistake, while
// the DRFS_TLS_* environment variables that fill the --tls-* flags are
// ignored, the file's TLS settings (or none) being the agent's.
func (c *agentCmd) config(given []string) (*orchestrator.Config, targets.TLS, error) {
	if c.Config != "" {
		for _, name := range given {
			if slices.Contains(settingFlags, name) {
				return nil, targets.TLS{}, fmt.Errorf("give either --config or the settings as flags, not both (--%s was given with --config %s)", name, c.Config)
			}
		}
		cfg, err := orchestrator.LoadConfig(c.Config)
		if err != nil {
			return nil, targets.TLS{}, err
		}
		return cfg, targets.TLS{Cert: cfg.TLSCert, Key: cfg.TLSKey, CA: cfg.TLSCA}, nil
	}
	if c.Source == "" || c.Mountpoint == "" || c.State == "" {
		return nil, targets.TLS{}, errors.New("give --config FILE, or --source, --mountpoint and --state")
	}
	var b strings.Builder
	for _, kv := range [][2]string{{"source", c.Source}, {"mountpoint", c.Mountpoint}, {"state", c.State},
		{"target", c.Target}, {"source-id", c.SourceID}, {"tls-cert", c.Cert}, {"tls-key", c.Key}, {"tls-ca", c.CA},
		{"interval", c.Interval}, {"retention", c.Retention}, {"resync-window", c.ResyncWindow}, {"resync-threshold", c.ResyncThresh}, {"compress", c.Compress}, {"bandwidth", c.Bandwidth},
		{"max-generation", c.MaxGeneration}, {"allow-other", trueOrEmpty(c.AllowOther)}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, "%s: %q\n", kv[0], kv[1]) // YAML: a double-quoted string is any value
		}
	}
	cfg, err := orchestrator.ParseConfig("flags", []byte(b.String()))
	if err != nil {
		// The lines are ours, not the user's: each message names the
		// setting, which is the flag's name.
		return nil, targets.TLS{}, errors.New(flagLinePrefix.ReplaceAllString(err.Error(), "--"))
	}
	return cfg, c.TLS, nil
}

// checkTargets finds a bad target URL or a missing TLS file of the
// configuration cfg (tlsFiles its TLS settings) before the agent mounts
// anything, without contacting the network: the error names the setting,
// as a flag or in the configuration file.
func checkTargets(cfg *orchestrator.Config, tlsFiles targets.TLS, fromFile bool) error {
	err := targets.Check(cfg.Target, tlsFiles)
	switch {
	case err == nil:
		return nil
	case fromFile:
		return fmt.Errorf("%s: %w", cfg.File, err)
	}
	return fmt.Errorf("--%w", err)
}

// commandLineFlags returns the names of the flags given on the command
// line of kctx, not those that defaults or the environment filled.
func commandLineFlags(kctx *kong.Context) []string {
	var names []string
	for _, p := range kctx.Path {
		if p.Flag != nil && !p.Resolved {
			names = append(names, p.Flag.Name)
		}
	}
	return names
}

// trueOrEmpty is the setting of a boolean flag: "true" when it was given,
// unset otherwise.
func trueOrEmpty(b bool) string {
	if b {
		return "true"
	}
	return ""
}

var flagLinePrefix = regexp.MustCompile(`(?m)^flags:(\d+: )?`)

// agentMemoryLimit is the agent's soft memory limit unless GOMEMLIMIT
// says otherwise: the garbage collector works harder near it, so that the
// agent's memory stays bounded however large the disks it protects.
const agentMemoryLimit = 160 << 20

func (c *agentCmd) Run(kctx *kong.Context) error {
	c.startLog()
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(agentMemoryLimit)
	}
	cfg, tlsFiles, err := c.config(commandLineFlags(kctx))
	if err != nil {
		return err
	}
	if err := checkTargets(cfg, tlsFiles, c.Config != ""); err != nil {
		return err
	}
	act, err := c.activityFlags.options()
	if err != nil {
		return err
	}
	stop := agent.NotifyStop()
	defer signal.Stop(stop)
	return agent.Run(agent.Options{Config: cfg, TLS: tlsFiles, BlockSize: c.BlockSize, Activity: act, Socket: c.Socket,
		MetricsListen: c.MetricsListen, Version: versionString()}, stop)
}
