package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/shipper"
)

type mountCmd struct {
	Source     string `arg:"" help:"Directory of disk images: each top-level folder is a VM, each file inside it a disk; a top-level file is a one-disk VM." type:"path"`
	Mountpoint string `arg:"" help:"Empty directory where the tracked view of SOURCE appears; run VMs from here." type:"path"`
	State      string `required:"" help:"State directory of the change log (created if missing; keep it off the mount)." type:"path"`
	BlockSize  int    `default:"4096" help:"Tracking block size in bytes, a power of two (fixed when the state directory is created)."`
	Debug      bool   `help:"Log every FUSE request (slow)."`
	AllowOther bool   `name:"allow-other" help:"Let users other than root open the disks on the mount, as their file modes allow (libvirt runs QEMU as its own user: docs/libvirt.md)."`
	replicationFlags
	activityFlags
	logFlags
}

func (c *mountCmd) Run() error {
	c.startLog()
	stop := agent.NotifyStop()
	defer signal.Stop(stop)
	repl, err := c.replicationFlags.options()
	if err != nil {
		return err
	}
	act, err := c.activityFlags.options()
	if err != nil {
		return err
	}
	return agent.RunMount(agent.MountOptions{Source: c.Source, Mountpoint: c.Mountpoint, State: c.State,
		BlockSize: c.BlockSize, Activity: act, Debug: c.Debug, AllowOther: c.AllowOther, Replication: repl}, stop)
}

// replicationFlags are the mount's flags for shipping to a target.
type replicationFlags struct {
	Target    string            `placeholder:"URL" help:"Replicate to this target: dir:///path (a directory, local or mounted) or https://host:port (a drfs target serve). Without it the mount only records."`
	Interval  time.Duration     `default:"5m" help:"Replication interval: every VM is rotated and shipped this often (30s, 5m, 15m, or any duration from 1s)."`
	Retention time.Duration     `default:"24h" help:"Keep recovery points this long on the target (the newest is always kept)."`
	MaxPoints int               `name:"max-points" default:"0" help:"Keep at most this many recovery points per VM as well (0: no limit but --retention)."`
	Bandwidth shipper.Bandwidth `default:"0" help:"Upload limit, e.g. 50MiB/s; 0 means unlimited."`
	Compress  string            `enum:"auto,lz4,none" default:"auto" help:"LZ4 on what is shipped: auto compresses for a target reached over a network (https://, azblob://) and not for a dir:// target, which stores the blocks uncompressed; lz4 always; none for a network faster than LZ4 (about 0.5 GB/s per core)."`
	SourceID  string            `name:"source-id" placeholder:"NAME" help:"Identity of this source host on the target; a target refuses VMs of another source (default: the host name)."`
	// The default must stay orchestrator.DefaultWindowSpec (a test checks).
	ResyncWindow    string  `name:"resync-window" default:"18:00-08:00,sat,sun" placeholder:"SPEC" help:"When automatic resynchronizations run, in local time: HH:MM-HH:MM ranges and days (mon..sun, mon-fri), comma-separated, or always, or never (then only drfs resync --now runs one)."`
	ResyncThreshold percent `name:"resync-threshold" default:"50%" placeholder:"PCT" help:"When a disk's change log (generations not yet shipped) reaches this share of its size, a disk under 1 GiB counted as 1 GiB, drop the VM's log and compare its disks from a snapshot instead, in the resync window."`
	targets.TLS
}

// percent is a percentage from 1 to 100, written 50% or 50.
type percent int

func (p *percent) UnmarshalText(b []byte) error {
	s := strings.TrimSpace(string(b))
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(s, "%")))
	if err != nil {
		return fmt.Errorf("%q is not a percentage (such as 50%%)", s)
	}
	if n < 1 || n > 100 {
		return fmt.Errorf("%d%% is out of range (1%%..100%%)", n)
	}
	*p = percent(n)
	return nil
}

// options checks the flags and returns the replication they ask for.
func (f *replicationFlags) options() (agent.ReplicationOptions, error) {
	o := agent.ReplicationOptions{Target: f.Target, TLS: f.TLS, Interval: f.Interval, Retention: f.Retention,
		MaxPoints: f.MaxPoints, Bandwidth: f.Bandwidth, Compress: f.Compress, SourceID: f.SourceID,
		ResyncThreshold: int(f.ResyncThreshold)}
	if f.Target == "" {
		return o, nil
	}
	if f.Interval < time.Second {
		return o, fmt.Errorf("--interval %v is too short: use at least 1s (30s, 5m and 15m are the usual choices)", f.Interval)
	}
	if f.MaxPoints < 0 {
		return o, fmt.Errorf("--max-points %d: give 0 (no limit) or a positive count", f.MaxPoints)
	}
	if f.Retention < f.Interval {
		return o, fmt.Errorf("--retention %v is shorter than --interval %v: no older point would ever be kept", f.Retention, f.Interval)
	}
	w, err := orchestrator.ParseWindow(f.ResyncWindow)
	if err != nil {
		return o, fmt.Errorf("--resync-window: %w", err)
	}
	o.Window = w.In(time.Local)
	if o.ResyncThreshold == 0 {
		o.ResyncThreshold = orchestrator.DefaultResyncThreshold
	}
	if o.SourceID == "" {
		h, err := os.Hostname()
		if err != nil {
			return o, fmt.Errorf("no --source-id given and the host name is unknown: %w", err)
		}
		o.SourceID = h
	}
	return o, nil
}
