package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/target"
)

// failoverCmd is drfs failover VM|--plan FILE, and drfs failover cleanup.
type failoverCmd struct {
	Start   failoverStartCmd   `cmd:"" default:"withargs" help:"Fail a VM or a recovery plan over to its replica at the recovery site (the default: drfs failover VM ...)."`
	Cleanup failoverCleanupCmd `cmd:"" help:"Remove the copy a test failover made in DIR (only a directory drfs failover made)."`
	Cancel  failoverCancelCmd  `cmd:"" help:"Undo a planned failover that was not committed: the source VM writes and replicates again (agent)."`
}

type failoverStartCmd struct {
	VM       string `arg:"" optional:"" help:"VM to fail over (or --plan)."`
	Plan     string `type:"existingfile" placeholder:"FILE" help:"Fail over the VMs of a recovery plan (docs/failover.md), each into DIR/VM."`
	Type     string `required:"" enum:"planned,unplanned,test" help:"planned: run by the source's agent: the VM's writes held, its last generation shipped and checked, no data lost; unplanned: the source is gone, start from a recovery point; test: an isolated copy while replication goes on (drfs failover cleanup removes it)."`
	Target   string `env:"DRFS_TARGET" placeholder:"URL" help:"Target: dir:///path, https://host:port or azblob://account/container (unplanned and test; a planned failover uses the VM's)."`
	Point    string `default:"latest" placeholder:"latest|latest-processed|ID|TIME" help:"latest: the newest crash-consistent point; latest-processed: the newest point of any kind (may be a fuzzy initial or resync copy); a point number; or a time (RFC 3339, or relative as -1h): the newest consistent point cut at or before it."`
	To       string `placeholder:"DIR" type:"path" help:"Directory to write the disks into (planned: optional, without it the last point is only shipped and checked, as when failing back) (a plan: DIR/VM for each VM); it must not exist or be empty."`
	Hook     string `placeholder:"CMD" help:"Command (sh -c) to run after materialising, with DRFS_VM, DRFS_POINT, DRFS_FAILOVER_TYPE, DRFS_DIR and DRFS_DISKS in its environment; its failure fails the failover (the disks stay)."`
	Force    bool   `help:"Accept a chosen point that is only a fuzzy copy (initial replication or resync)."`
	DryRun   bool   `help:"Print what would happen, in order, and change nothing."`
	StateDir string `default:"/var/lib/drfs/plans" type:"path" placeholder:"DIR" help:"Where a running plan says it waits at a manual step, for drfs plan continue."`
	StopHook string `name:"stop-hook" placeholder:"CMD" help:"Planned: command (sh -c) that stops the VM first, with DRFS_VM and DRFS_DISKS set, e.g. virsh shutdown --mode acpi."`
	JSON     bool   `help:"Print the result as JSON: the point chosen, the directory, the disks, the RTO and the hook's result, or each VM and step of a plan (messages and hooks' output go to stderr; the exit status is the same)."`
	targets.TLS
	socketFlag
}

func (c *failoverStartCmd) Run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	report, err := c.run(ctx)
	stop()
	if c.JSON && report != nil {
		// Also when a hook or a plan's step failed: what was done.
		if jerr := printJSON(report); jerr != nil && err == nil {
			err = jerr
		}
	}
	code := 1
	var he *recovery.HookError
	if errors.As(err, &he) && he.Code > 0 {
		code = he.Code
	}
	var pf *orchestrator.PlanFailure
	if errors.As(err, &pf) {
		fmt.Fprintln(os.Stderr, "drfs: "+strings.ReplaceAll(pf.Report(), "\n", "\ndrfs: "))
		os.Exit(code)
	}
	if he != nil {
		fmt.Fprintln(os.Stderr, "drfs:", err)
		os.Exit(code)
	}
	return err
}

// run does the failover and returns its report for --json (nil when it
// did nothing worth one).
func (c *failoverStartCmd) run(ctx context.Context) (any, error) {
	typ, err := orchestrator.ParseFailoverType(c.Type)
	if err != nil {
		return nil, err
	}
	if typ == orchestrator.Planned {
		return c.runPlanned(ctx)
	}
	if c.Target == "" {
		return nil, errors.New("give the target with --target URL (the recovery site's replicas)")
	}
	if c.To == "" {
		return nil, errors.New("give the directory to write the disks into with --to DIR")
	}
	if (c.VM == "") == (c.Plan == "") {
		return nil, errors.New("name one VM, or a recovery plan with --plan FILE")
	}
	if err := recovery.CheckEmptyDir(c.To); err != nil {
		return nil, err
	}
	if err := c.checkIsolated(); err != nil {
		return nil, err
	}
	store, err := targets.OpenExisting(c.Target, c.TLS)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	if c.Plan != "" {
		res, err := c.runPlan(ctx, store, typ)
		if res == nil {
			return nil, err
		}
		return res, err
	}
	j, err := c.prepare(ctx, store, typ, c.VM, c.To)
	if err != nil {
		return nil, err
	}
	if c.DryRun {
		if !c.JSON {
			fmt.Println(j.Describe())
		}
		res := j.Report()
		res.DryRun = true
		return res, nil
	}
	created, err := recovery.MakeDir(c.To)
	if err != nil {
		return nil, err
	}
	_, err = j.Run(ctx)
	if err != nil && created && j.Result.Disks == nil {
		os.RemoveAll(c.To)
	}
	if j.Done == nil {
		return nil, err
	}
	return j.Done, err
}

// hookOutput is where hooks write their standard output: stderr with
// --json, whose standard output is the JSON alone.
func (c *failoverStartCmd) hookOutput() io.Writer {
	if c.JSON {
		return os.Stderr
	}
	return os.Stdout
}

// checkIsolated refuses a directory inside a directory target: a failover
// must not write into the store.
func (c *failoverStartCmd) checkIsolated() error {
	u, err := url.Parse(c.Target)
	if err != nil || u.Scheme != "dir" {
		return nil
	}
	if rel, err := filepath.Rel(filepath.Clean(u.Path), filepath.Clean(c.To)); err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return fmt.Errorf("%s is inside the target %s: fail over into a directory of its own", c.To, c.Target)
	}
	return nil
}

// prepare checks everything about the failover of vm into dir that can be
// checked without changing anything, and chooses its point.
func (c *failoverStartCmd) prepare(ctx context.Context, store target.Store, typ orchestrator.FailoverType, vm, dir string) (*recovery.Failover, error) {
	points, err := vmPoints(ctx, store, c.Target, vm)
	if err != nil {
		return nil, err
	}
	p, err := recovery.SelectPoint(points, c.Point, time.Now(), c.Force)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", vm, err)
	}
	if !p.Kind.Consistent() && !c.Force && c.Point != "latest-processed" {
		return nil, fmt.Errorf("%s point %s is a fuzzy copy (%s), not a consistent state: choose a later point, or add --force", vm, p.ID(), p.Kind)
	}
	return &recovery.Failover{Type: typ, TargetURL: c.Target, Store: store, VM: vm, Point: p,
		Replicas: recovery.ReflinkSource(c.Target, vm, points), Dir: dir, Hook: c.Hook, HookOut: c.hookOutput(),
		Progress: newProgress(vm).report}, nil
}

type failoverCleanupCmd struct {
	Dir  string `arg:"" type:"path" help:"Directory a test failover (of a VM or a plan) materialised into."`
	JSON bool   `help:"Print what was removed and what was kept as JSON."`
}

// Run removes what the test failover wrote in Dir (its disks and marker),
// then Dir if nothing else is left; files drfs did not write stay, and are
// named.
func (c *failoverCleanupCmd) Run() error {
	res, err := recovery.Cleanup(c.Dir)
	if err != nil {
		return err
	}
	what := "VM " + res.VM
	if res.Plan != "" {
		what = "plan " + res.Plan
	}
	if len(res.Kept) > 0 {
		fmt.Fprintf(os.Stderr, "drfs: removed the test failover of %s; kept what drfs did not write: %s\n", what, strings.Join(res.Kept, " "))
	} else {
		fmt.Fprintf(os.Stderr, "drfs: removed the test failover of %s (%s)\n", what, c.Dir)
	}
	if c.JSON {
		return printJSON(res)
	}
	return nil
}
