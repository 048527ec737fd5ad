package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
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

// failoverResult is the JSON of the failover of one VM.
type failoverResult struct {
	copyReport
	Type   orchestrator.FailoverType `json:"type"`
	Target string                    `json:"target"`
	DryRun bool                      `json:"dry_run,omitempty"`
	// RTOSeconds is how long materialising the point took, before the hook.
	RTOSeconds float64     `json:"rto_seconds"`
	Hook       *hookResult `json:"hook,omitempty"`
}

// hookResult is how a hook ran.
type hookResult struct {
	Command        string  `json:"command"`
	ExitCode       int     `json:"exit_code"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Error          string  `json:"error,omitempty"`
}

// markerName is the file a failover leaves in its directory: what it is,
// so that cleanup removes only what drfs made.
const markerName = ".drfs-failover.json"

// failoverMarker is the content of markerName. A VM's directory has VM,
// Point and Disks; a plan's directory has Plan and VMs (each in DIR/VM
// with its own marker).
type failoverMarker struct {
	Type   orchestrator.FailoverType `json:"type"`
	Target string                    `json:"target"`
	Time   time.Time                 `json:"time"`
	VM     string                    `json:"vm,omitempty"`
	Point  uint64                    `json:"point,omitempty"`
	Kind   target.PointKind          `json:"kind,omitempty"`
	Cut    time.Time                 `json:"cut,omitzero"`
	Disks  []string                  `json:"disks,omitempty"` // relative to the directory
	Plan   string                    `json:"plan,omitempty"`
	VMs    []string                  `json:"vms,omitempty"`
}

// hookError is a hook that failed: the command exits with its status.
type hookError struct {
	cmd  string
	code int
	err  error
}

func (e *hookError) Error() string { return fmt.Sprintf("hook %q failed: %v", e.cmd, e.err) }
func (e *hookError) Unwrap() error { return e.err }

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
	var he *hookError
	if errors.As(err, &he) && he.code > 0 {
		code = he.code
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
	if err := checkEmptyDir(c.To); err != nil {
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
			fmt.Println(j.describe())
		}
		res := j.report()
		res.DryRun = true
		return res, nil
	}
	created, err := makeDir(c.To)
	if err != nil {
		return nil, err
	}
	_, err = j.run(ctx)
	if err != nil && created && j.m.Disks == nil {
		os.RemoveAll(c.To)
	}
	if j.res == nil {
		return nil, err
	}
	return j.res, err
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

// vmFailover is the failover of one VM, its point chosen.
type vmFailover struct {
	typ       orchestrator.FailoverType
	targetURL string
	store     target.Store
	vm        string
	point     target.Point
	replicas  string // where to clone from, or ""
	dir       string
	hook      string
	hookOut   io.Writer // the hook's standard output
	m         recovery.Result
	res       *failoverResult // once materialised
	err       error           // of run
}

// prepare checks everything about the failover of vm into dir that can be
// checked without changing anything, and chooses its point.
func (c *failoverStartCmd) prepare(ctx context.Context, store target.Store, typ orchestrator.FailoverType, vm, dir string) (*vmFailover, error) {
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
	return &vmFailover{typ: typ, targetURL: c.Target, store: store, vm: vm, point: p,
		replicas: recovery.ReflinkSource(c.Target, vm, points), dir: dir, hook: c.Hook, hookOut: c.hookOutput()}, nil
}

// report is what the failover did so far (before run, what it will do).
func (j *vmFailover) report() failoverResult {
	return failoverResult{copyReport: newCopyReport(j.vm, j.point, j.dir, j.m), Type: j.typ,
		Target: redactURL(j.targetURL), RTOSeconds: j.m.Took.Seconds()}
}

func (j *vmFailover) describe() string {
	how := "sparse copy"
	if j.replicas != "" {
		how = "reflink of the replica where the file system can, else sparse copy"
	}
	return fmt.Sprintf("%s failover of %s at point %s (%s, cut %s) into %s by %s",
		j.typ, j.vm, j.point.ID(), j.point.Kind, j.point.Frozen.Local().Format(time.RFC3339), j.dir, how)
}

// run materialises the point in j.dir (which exists and is empty), leaves
// the marker, and runs the hook. It returns a line that says what it did.
func (j *vmFailover) run(ctx context.Context) (string, error) {
	p := j.point
	say(slog.LevelInfo, j.describe())
	if !p.Kind.Consistent() {
		say(slog.LevelWarn, fmt.Sprintf("point %s of %s is a fuzzy copy (%s): its disks may not be consistent with each other or in themselves; check them (fsck) before use", p.ID(), j.vm, p.Kind))
	}
	m, err := recovery.Materialize(ctx, j.store, j.vm, p, j.dir, recovery.Options{Replicas: j.replicas, Progress: newProgress(j.vm).report})
	j.m = m
	if err != nil {
		return "", err
	}
	mk := failoverMarker{Type: j.typ, Target: redactURL(j.targetURL), Time: time.Now().UTC(), VM: j.vm,
		Point: p.Generation, Kind: p.Kind, Cut: p.Frozen}
	for _, d := range p.Disks {
		mk.Disks = append(mk.Disks, d.Name)
	}
	if err := writeMarker(j.dir, mk); err != nil {
		return "", err
	}
	res := j.report()
	j.res = &res
	done := fmt.Sprintf("%s failed over (%s) at point %s into %s: %d disk(s), materialised in %v (RTO), %s written, %s",
		j.vm, j.typ, p.ID(), j.dir, len(p.Disks), m.Took.Round(time.Millisecond), bytesString(m.Written), m.Method())
	if m.Cloned > 0 {
		done += fmt.Sprintf(" (%s shared with the replica)", bytesString(m.Cloned))
	}
	say(slog.LevelInfo, done)
	if j.hook == "" {
		return done, nil
	}
	env := []string{
		"DRFS_VM=" + j.vm,
		"DRFS_POINT=" + p.ID(),
		"DRFS_FAILOVER_TYPE=" + string(j.typ),
		"DRFS_DIR=" + j.dir,
		"DRFS_DISKS=" + strings.Join(m.Disks, " "),
	}
	say(slog.LevelInfo, fmt.Sprintf("%s: running hook: %s", j.vm, j.hook))
	out := j.hookOut
	if out == nil {
		out = os.Stdout
	}
	hr, err := runHookTo(ctx, j.hook, env, out)
	res.Hook = &hr
	if err != nil {
		return done, fmt.Errorf("%s: %w (the materialised disks stay in %s)", j.vm, err, j.dir)
	}
	return done + "; hook ran", nil
}

// runHook runs cmd with sh -c, its output shown, env added to drfs's.
func runHook(ctx context.Context, cmd string, env []string) error {
	_, err := runHookTo(ctx, cmd, env, os.Stdout)
	return err
}

// runHookTo runs cmd as runHook does, its standard output to out, and
// says how it ran.
func runHookTo(ctx context.Context, cmd string, env []string, out io.Writer) (hookResult, error) {
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdout, c.Stderr = out, os.Stderr
	c.Env = append(os.Environ(), env...)
	start := time.Now()
	err := c.Run()
	hr := hookResult{Command: cmd, ElapsedSeconds: time.Since(start).Seconds()}
	if err == nil {
		say(slog.LevelInfo, fmt.Sprintf("hook %q done in %v", cmd, time.Since(start).Round(time.Millisecond)))
		return hr, nil
	}
	code := 1
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		code = ee.ExitCode()
	}
	hr.ExitCode, hr.Error = code, err.Error()
	return hr, &hookError{cmd: cmd, code: code, err: err}
}

func writeMarker(dir string, mk failoverMarker) error {
	data, err := json.MarshalIndent(mk, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, markerName), append(data, '\n'), 0o644)
}

func readMarker(dir string) (failoverMarker, error) {
	var mk failoverMarker
	data, err := os.ReadFile(filepath.Join(dir, markerName))
	if errors.Is(err, os.ErrNotExist) {
		return mk, fmt.Errorf("%s was not made by drfs failover (it has no %s): not removing it", dir, markerName)
	}
	if err != nil {
		return mk, err
	}
	if err := json.Unmarshal(data, &mk); err != nil {
		return mk, fmt.Errorf("%s: %s: %w: not removing it", dir, markerName, err)
	}
	return mk, nil
}

// redactURL drops credentials from a target URL for the marker.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		u.RawQuery = ""
		return u.Redacted()
	}
	return s
}

type failoverCleanupCmd struct {
	Dir  string `arg:"" type:"path" help:"Directory a test failover (of a VM or a plan) materialised into."`
	JSON bool   `help:"Print what was removed and what was kept as JSON."`
}

// cleanupResult is what drfs failover cleanup removed and kept.
type cleanupResult struct {
	Dir  string   `json:"dir"`
	VM   string   `json:"vm,omitempty"`
	Plan string   `json:"plan,omitempty"`
	VMs  []string `json:"vms,omitempty"` // of the plan
	// Removed are the disks, markers and directories removed; Kept what
	// drfs did not write, left in place.
	Removed    []string `json:"removed"`
	Kept       []string `json:"kept"`
	DirRemoved bool     `json:"dir_removed"`
}

// Run removes what the test failover wrote in Dir (its disks and marker),
// then Dir if nothing else is left; files drfs did not write stay, and are
// named.
func (c *failoverCleanupCmd) Run() error {
	res, err := cleanup(c.Dir)
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

// cleanup removes the test failover in dir.
func cleanup(dir string) (cleanupResult, error) {
	res := cleanupResult{Dir: dir, Removed: []string{}, Kept: []string{}}
	mk, err := readMarker(dir)
	if err != nil {
		return res, err
	}
	res.VM, res.Plan, res.VMs = mk.VM, mk.Plan, mk.VMs
	if mk.Type != orchestrator.Test {
		what := "VM " + mk.VM
		if mk.Plan != "" {
			what = "plan " + mk.Plan
		}
		return res, fmt.Errorf("%s holds the %s failover of %s: those are the VM's disks now, not a test copy; drfs failover cleanup removes only test failovers", dir, mk.Type, what)
	}
	var left, removed []string
	if mk.Plan != "" {
		for _, vm := range mk.VMs {
			sub := filepath.Join(dir, vm)
			if _, err := os.Stat(sub); errors.Is(err, os.ErrNotExist) {
				continue // the plan stopped before it
			}
			vmk, err := readMarker(sub)
			if err == nil && (vmk.Type != orchestrator.Test || vmk.VM != vm) {
				err = fmt.Errorf("%s: its marker does not name a test failover of %s: not removing it", sub, vm)
			}
			if err != nil {
				return res, err
			}
			r, l, err := cleanupVM(sub, vmk)
			removed = append(removed, r...)
			if err != nil {
				return res, err
			}
			left = append(left, l...)
		}
	} else if removed, left, err = cleanupVM(dir, mk); err != nil {
		return res, err
	}
	res.Removed = append(res.Removed, removed...)
	marker := filepath.Join(dir, markerName)
	if err := os.Remove(marker); err == nil {
		res.Removed = append(res.Removed, marker)
	} else if !errors.Is(err, os.ErrNotExist) {
		return res, err
	}
	switch err := os.Remove(dir); {
	case err == nil:
		res.Removed = append(res.Removed, dir)
		res.DirRemoved = true
	case errors.Is(err, os.ErrNotExist):
		res.DirRemoved = true // with its VM's disks
	default:
		left = append(left, leftIn(dir, left)...)
	}
	res.Kept = append(res.Kept, left...)
	return res, nil
}

// leftIn returns what is in dir and not named in listed already: neither
// listed itself (what cleanupVM found left in dir) nor a directory that
// holds a listed path (the folder of a plan's VM, whose leftovers are
// named), so that each leftover is named once.
func leftIn(dir string, listed []string) []string {
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		if !slices.ContainsFunc(listed, func(l string) bool { return l == path || strings.HasPrefix(l, path+string(filepath.Separator)) }) {
			out = append(out, path)
		}
	}
	return out
}

// cleanupVM removes the disks and marker of one VM's test failover in dir,
// and dir if it is then empty; it returns what it removed and what was
// left.
func cleanupVM(dir string, mk failoverMarker) (removed, left []string, err error) {
	for _, d := range mk.Disks {
		if !filepath.IsLocal(filepath.FromSlash(d)) {
			return nil, nil, fmt.Errorf("%s: %s names disk %q outside the directory: not removing anything", dir, markerName, d)
		}
	}
	for _, d := range mk.Disks {
		path := filepath.Join(dir, filepath.FromSlash(d))
		if err := os.Remove(path); err == nil {
			removed = append(removed, path)
		} else if !errors.Is(err, os.ErrNotExist) {
			return removed, nil, err
		}
		// Directories of disk names (a/b.img), when empty.
		for p := filepath.Dir(path); p != dir && strings.HasPrefix(p, dir); p = filepath.Dir(p) {
			if os.Remove(p) != nil {
				break
			}
			removed = append(removed, p)
		}
	}
	marker := filepath.Join(dir, markerName)
	if err := os.Remove(marker); err == nil {
		removed = append(removed, marker)
	} else if !errors.Is(err, os.ErrNotExist) {
		return removed, nil, err
	}
	if os.Remove(dir) == nil {
		return append(removed, dir), nil, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return removed, nil, err
	}
	for _, e := range entries {
		left = append(left, filepath.Join(dir, e.Name()))
	}
	return removed, left, nil
}
