package orchestrator

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	_ "time/tzdata" // the window scripts read Europe/Paris wherever they run

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/target"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of the scripts in testdata/")

// TestScripts runs every testdata/*.txt script. A script is a sequence of
// cases, each a command line, optional input lines, a "----" line and the
// expected output, ended by a blank line; lines starting with # and blank
// lines between cases are comments. Cases of one script share their state
// (clock, VMs, jobs). go test -rewrite writes the actual output in place of
// the expected one.
func TestScripts(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) { runScript(t, file) })
	}
}

type scriptCase struct {
	line  int    // of the command
	pre   string // comments and blank lines before it, verbatim
	cmd   string
	input []string
	want  string
}

func parseScript(text string) (cases []scriptCase, trailer string, err error) {
	const (
		idle = iota
		input
		output
	)
	state := idle
	var cur scriptCase
	var pre strings.Builder
	var want []string
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	for i, line := range lines {
		switch state {
		case idle:
			if line == "" || strings.HasPrefix(line, "#") {
				pre.WriteString(line + "\n")
				continue
			}
			cur = scriptCase{line: i + 1, pre: pre.String(), cmd: line}
			pre.Reset()
			state = input
		case input:
			if line == "----" {
				state, want = output, nil
			} else {
				cur.input = append(cur.input, line)
			}
		case output:
			if line == "" {
				cur.want = strings.Join(want, "\n")
				cases = append(cases, cur)
				state = idle
			} else {
				want = append(want, line)
			}
		}
	}
	switch state {
	case input:
		return nil, "", fmt.Errorf("line %d: %q has no ---- line", cur.line, cur.cmd)
	case output:
		cur.want = strings.Join(want, "\n")
		cases = append(cases, cur)
	}
	return cases, pre.String(), nil
}

func runScript(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	cases, trailer, err := parseScript(string(data))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	w := newWorld(t)
	var out strings.Builder
	for _, c := range cases {
		got := w.run(c)
		// A blank line would end the case.
		for strings.Contains(got, "\n\n") {
			got = strings.ReplaceAll(got, "\n\n", "\n")
		}
		got = strings.TrimRight(got, "\n")
		if !*rewrite && got != c.want {
			t.Errorf("%s:%d: %s\n got:\n%s\nwant:\n%s", file, c.line, c.cmd, indent(got), indent(c.want))
		}
		out.WriteString(c.pre + c.cmd + "\n")
		for _, in := range c.input {
			out.WriteString(in + "\n")
		}
		out.WriteString("----\n" + got + "\n\n")
	}
	if *rewrite {
		text := strings.TrimRight(out.String()+trailer, "\n") + "\n"
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

// world is the state a script drives.
type world struct {
	t      *testing.T
	clock  *clock.Fake
	loc    *time.Location
	vms    map[string]*VM
	window Window
	jobs   *Jobs
}

// scriptStart is a Monday.
var scriptStart = time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)

func newWorld(t *testing.T) *world {
	c := clock.NewFake(scriptStart)
	return &world{t: t, clock: c, loc: time.UTC, vms: map[string]*VM{}, window: DefaultWindow().In(time.UTC), jobs: NewJobs(c)}
}

func (w *world) now() time.Time { return w.clock.Now() }

func (w *world) fmtTime(t time.Time) string { return t.In(w.loc).Format("2006-01-02 15:04:05 Mon") }

// run runs one case and returns its output.
func (w *world) run(c scriptCase) string {
	args := strings.Fields(c.cmd)
	cmd, args := args[0], args[1:]
	var b strings.Builder
	out := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	if err := w.dispatch(cmd, args, c.input, out); err != nil {
		out("error: %v", err)
	}
	return b.String()
}

type outFunc func(format string, a ...any)

func (w *world) dispatch(cmd string, args, input []string, out outFunc) error {
	if ev, ok := w.event(cmd, args); ok {
		if len(args) == 0 {
			return errors.New("usage: " + cmd + " VM ...")
		}
		v, err := w.vm(args[0])
		if err != nil {
			return err
		}
		return w.apply(v, ev, out)
	}
	switch cmd {
	case "now":
		out("now %s", w.fmtTime(w.now()))
	case "set-time":
		t, err := w.parseTime(one(args))
		if err != nil {
			return err
		}
		w.clock.Set(t)
		out("now %s", w.fmtTime(w.now()))
	case "advance":
		d, err := time.ParseDuration(one(args))
		if err != nil {
			return err
		}
		w.clock.Advance(d)
		out("now %s", w.fmtTime(w.now()))
	case "tz":
		loc, err := time.LoadLocation(one(args))
		if err != nil {
			return err
		}
		w.loc = loc
		w.window = w.window.In(loc)
		out("time zone %s", loc)
	case "protect":
		return w.protect(args, out)
	case "fail":
		return w.fail(args, out)
	case "succeed":
		return w.succeed(args, out)
	case "resume":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		if err := v.Resume(); err != nil {
			return err
		}
		out("%s: resumed; health %s", v.Name(), v.Health(w.now()))
	case "status":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		w.status(v, out)
	case "health":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		out("%s: %s", v.Name(), v.Health(w.now()))
	case "next-retry":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		out("%s: %s", v.Name(), w.nextRetry(v))
	case "advance-to-retry":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		next, ok := v.NextRetry(w.now())
		if !ok {
			return fmt.Errorf("%s has no retry due", v.Name())
		}
		d := next.Sub(w.now())
		w.clock.Set(next)
		out("now %s (+%s)", w.fmtTime(w.now()), fmtDuration(d))
	case "resync-due":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		ok, why := v.ResyncDue(w.now())
		yes := "no"
		if ok {
			yes = "yes"
		}
		out("%s: %s: %s", v.Name(), yes, why)
	case "check-log":
		return w.checkLog(args, out)
	case "try-all":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		w.tryAll(v, out)
	case "window-spec":
		win, err := ParseWindow(strings.Join(args, " "))
		if err != nil {
			return err
		}
		w.window = win.In(w.loc)
		out("window %s (%s)", w.window, w.loc)
	case "window":
		for _, a := range args {
			t, err := w.parseTime(a)
			if err != nil {
				return err
			}
			if w.window.InWindow(t) {
				out("%s: in", w.fmtTime(t))
			} else if open := w.window.NextOpen(t); open.IsZero() {
				out("%s: out, never opens", w.fmtTime(t))
			} else {
				out("%s: out, opens %s", w.fmtTime(t), w.fmtTime(open))
			}
		}
	case "config":
		return w.config(args, input, out)
	case "json":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		data, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		out("%s", data)
	case "reload":
		v, err := w.vm(one(args))
		if err != nil {
			return err
		}
		data, err := json.Marshal(v)
		if err != nil {
			return err
		}
		r := NewVM(v.Name(), v.Policy())
		if err := json.Unmarshal(data, r); err != nil {
			return err
		}
		if a, b := v.Status(w.now()), r.Status(w.now()); !reflect.DeepEqual(a, b) {
			w.t.Errorf("reload of %s differs:\n%+v\n%+v", v.Name(), a, b)
		}
		w.vms[v.Name()] = r
		out("%s: reloaded as %s", v.Name(), r.Describe())
	case "vm-load":
		r := NewVM(one(args), DefaultPolicy())
		if err := json.Unmarshal([]byte(strings.Join(input, "\n")), r); err != nil {
			return err
		}
		w.vms[r.Name()] = r
		out("%s: loaded as %s", r.Name(), r.Describe())
	default:
		return w.jobCmd(cmd, args, input, out)
	}
	return nil
}

func one(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return args[0]
}

func (w *world) parseTime(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02T15:04"} {
		if t, err := time.ParseInLocation(layout, s, w.loc); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time (2006-01-02T15:04[:05])", s)
}

func (w *world) vm(name string) (*VM, error) {
	if v := w.vms[name]; v != nil {
		return v, nil
	}
	return nil, fmt.Errorf("no vm %q in this script", name)
}

// event returns the lifecycle event of a command.
func (w *world) event(cmd string, args []string) (Event, bool) {
	rest := ""
	if len(args) > 1 {
		rest = strings.Join(args[1:], " ")
	}
	switch cmd {
	case "enabled":
		return Enabled{}, true
	case "copied":
		return InitialCopyDone{}, true
	case "finalized":
		return Finalized{}, true
	case "resync-required":
		return ResyncRequired{Reason: rest}, true
	case "resync-now":
		return ResyncRequired{Reason: "requested by the user", Now: true}, true
	case "resync-done":
		return ResyncDone{}, true
	case "failover":
		f := Failover{}
		if len(args) > 1 {
			f.Type = FailoverType(args[1])
		}
		if len(args) > 2 {
			f.Point = args[2]
		}
		return f, true
	case "cleanup-test":
		return CleanupTestFailover{}, true
	case "cancel-failover":
		return CancelFailover{}, true
	case "commit":
		return Commit{}, true
	case "reprotect":
		return Reprotect{}, true
	case "failback":
		return Failback{}, true
	case "unprotect":
		return Unprotect{}, true
	}
	return nil, false
}

// apply applies ev and prints the move; a refused event must change
// nothing.
func (w *world) apply(v *VM, ev Event, out outFunc) error {
	before, from := v.Status(w.now()), v.Describe()
	if err := v.Apply(w.now(), ev); err != nil {
		if after := v.Status(w.now()); !reflect.DeepEqual(before, after) {
			w.t.Errorf("%s: refused %v changed the vm:\n%+v\n%+v", v.Name(), ev, before, after)
		}
		if !errors.Is(err, ErrInvalidTransition) && !strings.Contains(err.Error(), "unknown failover type") {
			w.t.Errorf("%s: %v: error is not an ErrInvalidTransition: %v", v.Name(), ev, err)
		}
		return err
	}
	if to := v.Describe(); to != from {
		out("%s: %s → %s", v.Name(), from, to)
	} else {
		out("%s: %s (unchanged)", v.Name(), to)
	}
	return nil
}

// allEvents are the events try-all tries.
var allEvents = []Event{Protect{}, Enabled{}, InitialCopyDone{}, Finalized{}, ResyncRequired{Reason: "tried"}, ResyncDone{},
	Failover{Type: Planned}, Failover{Type: Unplanned}, Failover{Type: Test}, CleanupTestFailover{}, CancelFailover{},
	Commit{}, Reprotect{}, Failback{}, Unprotect{}}

// tryAll applies every event to a copy of v and prints the outcome: the
// whole transition table, one state at a time.
func (w *world) tryAll(v *VM, out outFunc) {
	out("from %s:", v.Describe())
	for _, ev := range allEvents {
		c := *v
		before := c.Status(w.now())
		if err := c.Apply(w.now(), ev); err != nil {
			if after := c.Status(w.now()); !reflect.DeepEqual(before, after) {
				w.t.Errorf("%s: refused %v changed the vm", v.Name(), ev)
			}
			if !errors.Is(err, ErrInvalidTransition) {
				w.t.Errorf("%s: %v: error is not an ErrInvalidTransition: %v", v.Name(), ev, err)
			}
			out("  %-26s error: %v", ev, err)
			continue
		}
		to := c.Describe()
		if to == v.Describe() {
			to += " (unchanged)"
		}
		out("  %-26s → %s", ev, to)
	}
}

func (w *world) protect(args []string, out outFunc) error {
	if len(args) == 0 {
		return errors.New("usage: protect VM [interval=D] [retention=D] [rpo=D] [window=SPEC] [threshold=N]")
	}
	name := args[0]
	p := DefaultPolicy()
	p.ResyncWindow = p.ResyncWindow.In(w.loc)
	if v := w.vms[name]; v != nil {
		p = v.Policy()
	}
	for _, a := range args[1:] {
		k, val, _ := strings.Cut(a, "=")
		var err error
		switch k {
		case "interval":
			p.Interval, err = time.ParseDuration(val)
		case "retention":
			p.Retention, err = time.ParseDuration(val)
		case "rpo":
			p.RPOWarning, err = time.ParseDuration(val)
		case "window":
			p.ResyncWindow, err = ParseWindow(val)
			p.ResyncWindow = p.ResyncWindow.In(w.loc)
		case "threshold":
			p.ResyncThreshold, err = strconv.Atoi(strings.TrimSuffix(val, "%"))
		default:
			err = fmt.Errorf("unknown argument %q", a)
		}
		if err != nil {
			return err
		}
	}
	if err := p.Validate(); err != nil {
		return err
	}
	v := w.vms[name]
	if v == nil {
		v = NewVM(name, p)
		w.vms[name] = v
	}
	v.SetPolicy(p)
	return w.apply(v, Protect{}, out)
}

// scriptErrors are the errors fail can inject, by name.
var scriptErrors = map[string]error{
	"network":         fmt.Errorf("dial tcp 192.0.2.1:8443: %w", syscall.ECONNREFUSED),
	"timeout":         fmt.Errorf("read tcp 192.0.2.1:8443: %w", os.ErrDeadlineExceeded),
	"low-disk":        fmt.Errorf("writing the log: %w", syscall.ENOSPC),
	"low-memory":      fmt.Errorf("allocating a frame buffer: %w", syscall.ENOMEM),
	"other":           errors.New("something unexpected"),
	"auth":            fmt.Errorf("target https://dr.example:8443: %w", target.ErrAuth),
	"vm-not-found":    fmt.Errorf("vm vm1: %w", target.ErrNotFound),
	"disk-not-found":  fmt.Errorf("disk root.qcow2: %w", target.ErrNotFound),
	"broken-chain":    fmt.Errorf("replica of root.qcow2: %w", ErrBrokenChain),
	"out-of-order":    fmt.Errorf("generation 12 on a replica at 10: %w", target.ErrOutOfOrder),
	"invalid-replica": fmt.Errorf("replica vm1: %w", ErrInvalidReplica),
	"corrupt":         fmt.Errorf("stage root.qcow2: %w", target.ErrCorrupt),
	"classified-disk": fmt.Errorf("target volume: %w", ErrLowDisk),
}

func (w *world) fail(args []string, out outFunc) error {
	if len(args) != 2 {
		return errors.New("usage: fail VM KIND")
	}
	v, err := w.vm(args[0])
	if err != nil {
		return err
	}
	e := scriptErrors[args[1]]
	if e == nil {
		return fmt.Errorf("unknown error kind %q", args[1])
	}
	if err := v.Failed(w.now(), e); err != nil {
		return err
	}
	st := v.Status(w.now())
	if st.Stopped {
		out("%s: failure %d: %s (permanent): %s", v.Name(), st.Failures, st.ErrorKind, v.Health(w.now()).Level)
		return nil
	}
	out("%s: failure %d: %s (recoverable), retry %s", v.Name(), st.Failures, st.ErrorKind, w.nextRetry(v))
	return nil
}

func (w *world) nextRetry(v *VM) string {
	next, ok := v.NextRetry(w.now())
	st := v.Status(w.now())
	switch {
	case ok:
		return fmt.Sprintf("at %s (in %s)", w.fmtTime(next), fmtDuration(next.Sub(w.now())))
	case !st.State.Replicating():
		return fmt.Sprintf("none: %s does not replicate", st.State)
	case st.Stopped:
		return "none: stopped by a permanent error"
	}
	return "none: not failing"
}

func (w *world) succeed(args []string, out outFunc) error {
	if len(args) == 0 {
		return errors.New("usage: succeed VM [point=OFFSET|none]")
	}
	v, err := w.vm(args[0])
	if err != nil {
		return err
	}
	point := w.now()
	for _, a := range args[1:] {
		switch {
		case a == "point=none":
			point = time.Time{}
		case strings.HasPrefix(a, "point="):
			d, err := time.ParseDuration(strings.TrimPrefix(a, "point="))
			if err != nil {
				return err
			}
			point = w.now().Add(d)
		default:
			return fmt.Errorf("unknown argument %q", a)
		}
	}
	if err := v.Succeeded(w.now(), point); err != nil {
		return err
	}
	out("%s: ok; %s", v.Name(), v.Health(w.now()))
	return nil
}

func (w *world) status(v *VM, out outFunc) {
	now := w.now()
	st := v.Status(now)
	out("%s: %s since %s", st.VM, v.Describe(), w.fmtTime(st.Since))
	out("  health: %s", st.Health)
	if st.Failures > 0 {
		out("  failures: %d since %s, last %s: %s: %s", st.Failures, w.fmtTime(st.FailingSince), w.fmtTime(st.LastFailure), st.ErrorKind, st.LastError)
	}
	out("  next retry: %s", w.nextRetry(v))
	if !st.NewestPoint.IsZero() {
		out("  newest point: %s (%s old)", w.fmtTime(st.NewestPoint), fmtDuration(now.Sub(st.NewestPoint)))
	}
	if st.ResyncReason != "" {
		s := "  resync: " + st.ResyncReason
		if st.ResyncNow {
			s += " (now)"
		}
		if st.ResumeTo != "" {
			s += ", then " + string(st.ResumeTo)
		}
		out("%s", s)
	}
	if st.Failover != "" {
		out("  failover: %s at %s", st.Failover, pointName(st.Point))
	}
	if st.TestFailover {
		out("  test failover at %s", pointName(st.TestPoint))
	}
}

func (w *world) checkLog(args []string, out outFunc) error {
	if len(args) != 4 {
		return errors.New("usage: check-log VM DISK log=SIZE size=SIZE")
	}
	v, err := w.vm(args[0])
	if err != nil {
		return err
	}
	var logBytes, size int64
	for _, a := range args[2:] {
		k, val, _ := strings.Cut(a, "=")
		n, err := parseSize(val)
		if err != nil {
			return err
		}
		switch k {
		case "log":
			logBytes = n
		case "size":
			size = n
		default:
			return fmt.Errorf("unknown argument %q", a)
		}
	}
	from := v.Describe()
	marked, err := v.CheckLog(w.now(), args[1], logBytes, size)
	if err != nil {
		return err
	}
	switch {
	case !v.Policy().LogOverThreshold(logBytes, size):
		out("%s: %s under the threshold (%d%%)", v.Name(), args[1], v.Policy().Threshold())
	case !marked:
		out("%s: %s over the threshold; already marked: %s", v.Name(), args[1], v.Status(w.now()).ResyncReason)
	case v.Describe() != from:
		out("%s: %s → %s: %s", v.Name(), from, v.Describe(), v.Status(w.now()).ResyncReason)
	default:
		out("%s: %s, resync pending: %s", v.Name(), v.Describe(), v.Status(w.now()).ResyncReason)
	}
	return nil
}

// parseSize parses a byte count with an optional binary unit: 512, 4KiB,
// 10GiB.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return int64(f * float64(mult)), nil
}

func (w *world) config(args, input []string, out outFunc) error {
	name := "agent.yaml"
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "file="); ok {
			name = v
		}
	}
	c, err := ParseConfig(name, []byte(strings.Join(input, "\n")))
	if err != nil {
		out("%v", err)
		return nil
	}
	// What is read back must read the same.
	c2, err := ParseConfig(name, []byte(c.Format()))
	if err != nil {
		w.t.Errorf("the formatted config does not parse: %v\n%s", err, c.Format())
	} else if c2.Format() != c.Format() {
		w.t.Errorf("the formatted config reads differently:\n%s\n%s", c.Format(), c2.Format())
	}
	out("%s", strings.TrimRight(c.Format(), "\n"))
	for _, vm := range c.VMs {
		p := vm.Policy
		out("# vm %s (line %d): every %s, points kept %s, warning after %s, resync %s in %s, at %d%%", vm.Name, vm.Line,
			fmtDuration(p.Interval), fmtDuration(p.Retention), fmtDuration(p.RPOLimit()), p.ResyncWindow, p.ResyncWindow.Location(), p.Threshold())
	}
	return nil
}

func (w *world) jobCmd(cmd string, args, input []string, out outFunc) error {
	id := func() (uint64, error) {
		if len(args) == 0 {
			return 0, errors.New("usage: " + cmd + " ID ...")
		}
		return strconv.ParseUint(args[0], 10, 64)
	}
	rest := func(from int) string {
		if len(args) <= from {
			return ""
		}
		return strings.Join(args[from:], " ")
	}
	var (
		j   Job
		err error
	)
	switch cmd {
	case "job-add":
		if len(args) != 2 {
			return errors.New("usage: job-add KIND VM")
		}
		j, err = w.jobs.Add(JobKind(args[0]), args[1])
	case "job-start":
		var n uint64
		if n, err = id(); err == nil {
			j, err = w.jobs.Start(n)
		}
	case "job-progress":
		var n uint64
		if n, err = id(); err == nil {
			var pct int
			if pct, err = strconv.Atoi(strings.TrimSuffix(one(args[1:]), "%")); err == nil {
				j, err = w.jobs.Progress(n, pct, rest(2))
			}
		}
	case "job-wait":
		var n uint64
		if n, err = id(); err == nil {
			j, err = w.jobs.Wait(n, rest(1))
		}
	case "job-succeed":
		var n uint64
		if n, err = id(); err == nil {
			j, err = w.jobs.Succeed(n, rest(1))
		}
	case "job-fail":
		var n uint64
		if n, err = id(); err == nil {
			j, err = w.jobs.Fail(n, errors.New(rest(1)))
		}
	case "job-cancel":
		var n uint64
		if n, err = id(); err == nil {
			j, err = w.jobs.Cancel(n, rest(1))
		}
	case "jobs":
		for _, j := range w.jobs.List(one(args)) {
			out("%s", w.fmtJob(j))
		}
		return nil
	case "jobs-json":
		data, err := json.Marshal(w.jobs)
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		if err := json.Indent(&buf, data, "", "  "); err != nil {
			return err
		}
		out("%s", buf.String())
		return nil
	case "jobs-reload":
		data, err := json.Marshal(w.jobs)
		if err != nil {
			return err
		}
		r := NewJobs(w.clock)
		if err := json.Unmarshal(data, r); err != nil {
			return err
		}
		if a, b := w.jobs.List(""), r.List(""); !reflect.DeepEqual(a, b) {
			w.t.Errorf("jobs differ after reload:\n%v\n%v", a, b)
		}
		w.jobs = r
		out("reloaded %d jobs", len(r.List("")))
		return nil
	case "jobs-load":
		r := NewJobs(w.clock)
		if err := json.Unmarshal([]byte(strings.Join(input, "\n")), r); err != nil {
			return err
		}
		w.jobs = r
		out("loaded %d jobs", len(r.List("")))
		return nil
	case "jobs-prune":
		d, err := time.ParseDuration(one(args))
		if err != nil {
			return err
		}
		out("pruned %d jobs", w.jobs.Prune(w.now().Add(-d)))
		return nil
	case "jobs-interrupt":
		for _, j := range w.jobs.Interrupt(rest(0)) {
			out("%s", w.fmtJob(j))
		}
		return nil
	case "job-active":
		if j, ok := w.jobs.Active(one(args)); ok {
			out("%s", w.fmtJob(j))
		} else {
			out("%s: no active job", one(args))
		}
		return nil
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	if err != nil {
		return err
	}
	out("%s", w.fmtJob(j))
	return nil
}

func (w *world) fmtJob(j Job) string {
	s := fmt.Sprintf("%d %s %s %s %d%%", j.ID, j.Kind, j.VM, j.State, j.Progress)
	if j.Message != "" {
		s += fmt.Sprintf(" %q", j.Message)
	}
	if j.Error != "" {
		s += fmt.Sprintf(" error=%q", j.Error)
	}
	clock := func(t time.Time) string { return t.In(w.loc).Format("15:04:05") }
	s += " created=" + clock(j.Created)
	if !j.Started.IsZero() {
		s += " started=" + clock(j.Started)
	}
	if !j.Ended.IsZero() {
		s += " ended=" + clock(j.Ended)
	}
	return s
}
