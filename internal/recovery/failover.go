package recovery

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
	"path/filepath"
	"strings"
	"time"

	"github.com/drfs-project/drfs/internal/units"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/resync"
	"github.com/drfs-project/drfs/target"
)

// PointRef is a recovery point in the JSON of the commands that choose
// one.
type PointRef struct {
	Generation    uint64           `json:"generation"`
	Cut           time.Time        `json:"cut"`
	Kind          target.PointKind `json:"kind"`
	AppConsistent bool             `json:"app_consistent"`
}

// RefOf is the PointRef of p.
func RefOf(p target.Point) PointRef {
	return PointRef{Generation: p.Generation, Cut: p.Frozen, Kind: p.Kind, AppConsistent: p.AppConsistent}
}

// DiskCopy is a disk written from a recovery point.
type DiskCopy struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// CopyReport is what materialising a point into a directory did, in the
// JSON of drfs restore and drfs failover.
type CopyReport struct {
	VM             string     `json:"vm"`
	Point          PointRef   `json:"point"`
	Dir            string     `json:"dir"`
	Disks          []DiskCopy `json:"disks"`
	BytesWritten   int64      `json:"bytes_written"`
	BytesShared    int64      `json:"bytes_shared"` // with the replica, by reflink
	DisksReflinked int        `json:"disks_reflinked"`
	DisksCopied    int        `json:"disks_copied"`
}

// NewCopyReport says what materialising point p of vm into dir did (m is
// zero for a dry run).
func NewCopyReport(vm string, p target.Point, dir string, m Result) CopyReport {
	r := CopyReport{VM: vm, Point: RefOf(p), Dir: dir, Disks: []DiskCopy{}, BytesWritten: m.Written,
		BytesShared: m.Cloned, DisksReflinked: m.Reflinks, DisksCopied: m.Copies}
	for _, d := range p.Disks {
		r.Disks = append(r.Disks, DiskCopy{Name: d.Name, Path: filepath.Join(dir, filepath.FromSlash(d.Name)), Size: d.Size})
	}
	return r
}

// FailoverReport is the JSON of the failover of one VM.
type FailoverReport struct {
	CopyReport
	Type   orchestrator.FailoverType `json:"type"`
	Target string                    `json:"target"`
	DryRun bool                      `json:"dry_run,omitempty"`
	// RTOSeconds is how long materialising the point took, before the hook.
	RTOSeconds float64     `json:"rto_seconds"`
	Hook       *HookResult `json:"hook,omitempty"`
}

// Failover is the failover of one VM into a directory, its point chosen.
// Fill the fields, then Run it (once).
type Failover struct {
	Type      orchestrator.FailoverType
	TargetURL string
	Store     target.Store
	VM        string
	Point     target.Point
	Replicas  string // where to clone from (ReflinkSource), or ""
	Dir       string
	Hook      string    // run after materialising (sh -c), or ""
	HookOut   io.Writer // the hook's standard output; nil: standard output
	// Progress, if set, hears how the copy of each disk goes
	// (Options.Progress).
	Progress func(disk string, done, total int64, finished bool)

	// Set by Run.
	Result  Result          // what materialising did
	Done    *FailoverReport // once materialised
	Err     error           // Run's error
	started bool
}

// Report is what the failover did so far (before Run, what it will do).
func (j *Failover) Report() FailoverReport {
	return FailoverReport{CopyReport: NewCopyReport(j.VM, j.Point, j.Dir, j.Result), Type: j.Type,
		Target: RedactURL(j.TargetURL), RTOSeconds: j.Result.Took.Seconds()}
}

// Describe says what the failover does, in one line.
func (j *Failover) Describe() string {
	how := "sparse copy"
	if j.Replicas != "" {
		how = "reflink of the replica where the file system can, else sparse copy"
	}
	return fmt.Sprintf("%s failover of %s at point %s (%s, cut %s) into %s by %s",
		j.Type, j.VM, j.Point.ID(), j.Point.Kind, j.Point.Frozen.Local().Format(time.RFC3339), j.Dir, how)
}

// Run materialises the point in j.Dir (which exists and is empty), leaves
// the marker, and runs the hook. It returns a line that says what it did;
// its error is also kept in j.Err.
func (j *Failover) Run(ctx context.Context) (string, error) {
	done, err := j.run(ctx)
	j.Err = err
	return done, err
}

func (j *Failover) run(ctx context.Context) (string, error) {
	if j.started {
		return "", errors.New("the failover of " + j.VM + " was already run")
	}
	j.started = true
	p := j.Point
	slog.Info(j.Describe())
	if !p.Kind.Consistent() {
		slog.Warn(fmt.Sprintf("point %s of %s is a fuzzy copy (%s): its disks may not be consistent with each other or in themselves; check them (fsck) before use", p.ID(), j.VM, p.Kind))
	}
	m, err := Materialize(ctx, j.Store, j.VM, p, j.Dir, Options{Replicas: j.Replicas, Progress: j.Progress})
	j.Result = m
	if err != nil {
		return "", err
	}
	mk := Marker{Type: j.Type, Target: RedactURL(j.TargetURL), Time: time.Now().UTC(), VM: j.VM,
		Point: p.Generation, Kind: p.Kind, Cut: p.Frozen}
	for _, d := range p.Disks {
		mk.Disks = append(mk.Disks, d.Name)
	}
	if err := WriteMarker(j.Dir, mk); err != nil {
		return "", err
	}
	res := j.Report()
	j.Done = &res
	done := fmt.Sprintf("%s failed over (%s) at point %s into %s: %d disk(s), materialised in %v (RTO), %s written, %s",
		j.VM, j.Type, p.ID(), j.Dir, len(p.Disks), m.Took.Round(time.Millisecond), units.Bytes(m.Written), m.Method())
	if m.Cloned > 0 {
		done += fmt.Sprintf(" (%s shared with the replica)", units.Bytes(m.Cloned))
	}
	slog.Info(done)
	if j.Hook == "" {
		return done, nil
	}
	env := []string{
		"DRFS_VM=" + j.VM,
		"DRFS_POINT=" + p.ID(),
		"DRFS_FAILOVER_TYPE=" + string(j.Type),
		"DRFS_DIR=" + j.Dir,
		"DRFS_DISKS=" + strings.Join(m.Disks, " "),
	}
	slog.Info(fmt.Sprintf("%s: running hook: %s", j.VM, j.Hook))
	hr, err := RunHook(ctx, j.Hook, env, j.HookOut)
	res.Hook = &hr
	if err != nil {
		return done, fmt.Errorf("%s: %w (the materialised disks stay in %s)", j.VM, err, j.Dir)
	}
	return done + "; hook ran", nil
}

// HookResult is how a hook ran.
type HookResult struct {
	Command        string  `json:"command"`
	ExitCode       int     `json:"exit_code"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Error          string  `json:"error,omitempty"`
}

// HookError is a hook that failed: a command that ran it exits with Code.
type HookError struct {
	Cmd  string
	Code int
	Err  error
}

func (e *HookError) Error() string { return fmt.Sprintf("hook %q failed: %v", e.Cmd, e.Err) }
func (e *HookError) Unwrap() error { return e.Err }

// RunHook runs cmd with sh -c, env added to drfs's, its standard output
// to out (nil: standard output) and its standard error to drfs's, and
// says how it ran. A hook that fails returns a *HookError.
func RunHook(ctx context.Context, cmd string, env []string, out io.Writer) (HookResult, error) {
	if out == nil {
		out = os.Stdout
	}
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdout, c.Stderr = out, os.Stderr
	c.Env = append(os.Environ(), env...)
	start := time.Now()
	err := c.Run()
	hr := HookResult{Command: cmd, ElapsedSeconds: time.Since(start).Seconds()}
	if err == nil {
		slog.Info(fmt.Sprintf("hook %q done in %v", cmd, time.Since(start).Round(time.Millisecond)))
		return hr, nil
	}
	code := 1
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		code = ee.ExitCode()
	}
	hr.ExitCode, hr.Error = code, err.Error()
	return hr, &HookError{Cmd: cmd, Code: code, Err: err}
}

// MarkerName is the file a failover leaves in its directory: what it is,
// so that cleanup removes only what drfs made.
const MarkerName = ".drfs-failover.json"

// Marker is the content of MarkerName. A VM's directory has VM, Point and
// Disks; a plan's directory has Plan and VMs (each in DIR/VM with its own
// marker).
type Marker struct {
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

// WriteMarker leaves mk in dir.
func WriteMarker(dir string, mk Marker) error {
	data, err := json.MarshalIndent(mk, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, MarkerName), append(data, '\n'), 0o644)
}

// ReadMarker reads the marker of dir; an error says that dir is not drfs
// failover's.
func ReadMarker(dir string) (Marker, error) {
	var mk Marker
	data, err := os.ReadFile(filepath.Join(dir, MarkerName))
	if errors.Is(err, os.ErrNotExist) {
		return mk, fmt.Errorf("%s was not made by drfs failover (it has no %s): not removing it", dir, MarkerName)
	}
	if err != nil {
		return mk, err
	}
	if err := json.Unmarshal(data, &mk); err != nil {
		return mk, fmt.Errorf("%s: %s: %w: not removing it", dir, MarkerName, err)
	}
	return mk, nil
}

// RedactURL drops credentials from a target URL, for what is shown or
// kept.
func RedactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		u.RawQuery = ""
		return u.Redacted()
	}
	return s
}

// CheckEmptyDir accepts a directory that does not exist or is empty.
func CheckEmptyDir(dir string) error {
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("%s is not empty: use a new or empty directory", dir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// MakeDir creates dir if it does not exist, and says whether it did.
func MakeDir(dir string) (bool, error) {
	if _, err := os.Stat(dir); err == nil {
		return false, nil
	}
	return true, os.MkdirAll(dir, 0o755)
}

// VerifyFile compares the disk file at path with disk of point gen of vm
// on store, by chunk checksums (resync.Verify).
func VerifyFile(ctx context.Context, store target.Store, vm string, gen uint64, disk, path string) (resync.Result, error) {
	f, err := os.Open(path)
	if err != nil {
		return resync.Result{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return resync.Result{}, err
	}
	return resync.Verify(ctx, f, st.Size(), store, vm, gen, disk, resync.Options{})
}
