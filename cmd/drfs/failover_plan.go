package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/orchestrator"
	"github.com/drfs-project/drfs/target"
)

// planFailoverResult is the JSON of drfs failover --plan: each step, and
// each VM with what became of it.
type planFailoverResult struct {
	Plan   string                    `json:"plan"`
	Type   orchestrator.FailoverType `json:"type"`
	Target string                    `json:"target"`
	Dir    string                    `json:"dir"`
	DryRun bool                      `json:"dry_run,omitempty"`
	// Completed: every step ran; otherwise Error says which failed and why.
	Completed      bool           `json:"completed"`
	Error          string         `json:"error,omitempty"`
	ElapsedSeconds float64        `json:"elapsed_seconds"`
	Steps          []planStepJSON `json:"steps"`
	VMs            []planVMResult `json:"vms"`
}

// planVMResult is one VM of a plan's failover.
type planVMResult struct {
	// Status is failed_over, failed or not_run (planned, in a dry run).
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	recovery.FailoverReport
}

// planReport says what the run of plan did: the steps before failed done,
// failed (its number; 0 for none) with err, the rest not run.
func planReport(c *failoverStartCmd, plan *orchestrator.Plan, typ orchestrator.FailoverType, jobs map[string]*recovery.Failover, failed int, err error, took time.Duration) *planFailoverResult {
	res := &planFailoverResult{Plan: plan.Name, Type: typ, Target: recovery.RedactURL(c.Target), Dir: c.To, DryRun: c.DryRun,
		Completed: !c.DryRun && failed == 0, ElapsedSeconds: took.Seconds(), VMs: []planVMResult{}}
	if err != nil {
		res.Error = err.Error()
	}
	for _, s := range plan.Steps() {
		st := planStep(plan, s)
		switch {
		case c.DryRun:
		case failed == 0 || s.N < failed:
			st.Status = "done"
		case s.N == failed:
			st.Status, st.Error = "failed", res.Error
		default:
			st.Status = "not_run"
		}
		res.Steps = append(res.Steps, st)
	}
	for _, vm := range plan.VMs() {
		j := jobs[vm]
		r := planVMResult{Status: "not_run", FailoverReport: j.Report()}
		if j.Done != nil {
			r.FailoverReport = *j.Done
		}
		r.DryRun = c.DryRun
		switch {
		case j.Err != nil:
			r.Status, r.Error = "failed", j.Err.Error()
		case j.Done != nil:
			r.Status = "failed_over"
		}
		res.VMs = append(res.VMs, r)
	}
	return res
}

// runPlan fails the VMs of a recovery plan over, group after group. Every
// VM's point is chosen before anything is written, so that bad input
// changes nothing; a failed step stops the plan with what was done. The
// report is nil where the plan did not start.
func (c *failoverStartCmd) runPlan(ctx context.Context, store target.Store, typ orchestrator.FailoverType) (*planFailoverResult, error) {
	plan, err := loadPlan(c.Plan)
	if err != nil {
		return nil, err
	}
	if _, err := strconv.ParseUint(c.Point, 10, 64); err == nil {
		return nil, fmt.Errorf("--point %s: a point number is one VM's; for a plan give latest, latest-processed or a time", c.Point)
	}
	known, err := store.VMs(ctx)
	if err != nil {
		return nil, fmt.Errorf("VMs on %s: %w", c.Target, err)
	}
	if err := plan.CheckVMs(known); err != nil {
		return nil, err
	}
	jobs := map[string]*recovery.Failover{}
	for _, vm := range plan.VMs() {
		j, err := c.prepare(ctx, store, typ, vm, filepath.Join(c.To, vm))
		if err != nil {
			return nil, fmt.Errorf("plan %s: %w", plan.Name, err)
		}
		jobs[vm] = j
	}
	steps := plan.Steps()
	if c.DryRun && c.JSON {
		return planReport(c, plan, typ, jobs, 0, nil, 0), nil
	}
	if c.DryRun {
		fmt.Printf("plan %s: %s failover into %s, %d steps (dry run: nothing is changed)\n", plan.Name, typ, c.To, len(steps))
		for _, s := range steps {
			fmt.Printf("%d. %s\n", s.N, plan.Describe(s))
			for _, vm := range s.VMs {
				fmt.Printf("   %s\n", jobs[vm].Describe())
			}
			if s.Kind == orchestrator.StepManual {
				fmt.Printf("   waits for: drfs plan continue %s\n", plan.Name)
			}
		}
		return nil, nil
	}

	lock, err := lockPlan(c.StateDir, plan.Name)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	created, err := recovery.MakeDir(c.To)
	if err != nil {
		return nil, err
	}
	if err := recovery.WriteMarker(c.To, recovery.Marker{Type: typ, Target: recovery.RedactURL(c.Target), Time: time.Now().UTC(), Plan: plan.Name, VMs: plan.VMs()}); err != nil {
		if created {
			os.RemoveAll(c.To)
		}
		return nil, err
	}
	start := time.Now()
	run := orchestrator.NewPlanRun(plan)
	for {
		s, ok := run.Next()
		if !ok {
			break
		}
		fmt.Fprintf(os.Stderr, "drfs: plan %s [%d/%d] %s\n", plan.Name, s.N, run.Len(), plan.Describe(s))
		g := plan.Groups[s.Group]
		var err error
		switch s.Kind {
		case orchestrator.StepHook:
			_, err = recovery.RunHook(ctx, s.Command, []string{
				"DRFS_PLAN=" + plan.Name,
				"DRFS_GROUP=" + g.Name,
				"DRFS_FAILOVER_TYPE=" + string(typ),
				"DRFS_DIR=" + c.To,
				"DRFS_VMS=" + strings.Join(g.VMs, " "),
			}, c.hookOutput())
			if err == nil {
				run.Record(fmt.Sprintf("%s %s hook ran: %s", g.Name, s.Phase, s.Command))
			}
		case orchestrator.StepManual:
			err = waitManual(ctx, c.StateDir, plan.Name, s, plan.Describe(s))
			if err == nil {
				run.Record(fmt.Sprintf("%s %s manual step continued: %s", g.Name, s.Phase, s.Message))
			}
		case orchestrator.StepFailover:
			err = failoverGroup(ctx, s.VMs, jobs, run)
		}
		if err != nil {
			return planReport(c, plan, typ, jobs, s.N, err, time.Since(start)), run.Fail(err)
		}
		run.Done()
	}
	fmt.Fprintf(os.Stderr, "drfs: plan %s done in %v: %d steps, VMs %s in %s\n", plan.Name, time.Since(start).Round(time.Millisecond), run.Len(), strings.Join(plan.VMs(), " "), c.To)
	return planReport(c, plan, typ, jobs, 0, nil, time.Since(start)), nil
}

// failoverGroup fails the VMs of a group over in parallel, each into its
// own directory, and records each that succeeded.
func failoverGroup(ctx context.Context, vms []string, jobs map[string]*recovery.Failover, run *orchestrator.PlanRun) error {
	done := make([]string, len(vms))
	errs := make([]error, len(vms))
	var wg sync.WaitGroup
	for i, vm := range vms {
		wg.Go(func() {
			j := jobs[vm]
			if err := os.Mkdir(j.Dir, 0o755); err != nil {
				errs[i] = err
			} else {
				done[i], errs[i] = j.Run(ctx)
			}
			j.Err = errs[i]
		})
	}
	wg.Wait()
	for i := range vms {
		if done[i] != "" {
			run.Record(done[i])
		}
	}
	return errors.Join(errs...)
}

// loadPlan reads and checks a plan file, printing each mistake.
func loadPlan(file string) (*orchestrator.Plan, error) {
	plan, mistakes, err := parsePlanFile(file)
	if err != nil {
		return nil, err
	}
	return plan, reportMistakes(file, mistakes)
}

// parsePlanFile reads and checks a plan file: the plan, or the mistakes
// found in it; err is a file that cannot be read.
func parsePlanFile(file string) (*orchestrator.Plan, []error, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, err
	}
	plan, err := orchestrator.ParsePlan(file, data)
	if err != nil {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			return nil, j.Unwrap(), nil
		}
		return nil, []error{err}, nil
	}
	return plan, nil, nil
}

// reportMistakes is the error of a plan file's mistakes, each printed on
// stderr when there are several; nil for none.
func reportMistakes(file string, mistakes []error) error {
	switch len(mistakes) {
	case 0:
		return nil
	case 1:
		return mistakes[0]
	}
	for _, e := range mistakes {
		fmt.Fprintln(os.Stderr, e)
	}
	return fmt.Errorf("%s: %d mistakes (above)", file, len(mistakes))
}

// The rendezvous of a manual step, in the state directory:
//
//	PLAN.lock      flock(2)ed by the process that runs the plan
//	PLAN.waiting   the step it waits at (JSON: step, message, token, pid)
//	PLAN.continue  written by drfs plan continue: the token it saw
//
// The runner polls for PLAN.continue with its token, removes both files
// and goes on. A stale file of a run that died is ignored: continue needs
// the lock held, and a new run removes what an old one left.
type planWait struct {
	Step    int    `json:"step"`
	What    string `json:"what"`
	Message string `json:"message"`
	Token   string `json:"token"`
	PID     int    `json:"pid"`
}

func planFile(stateDir, plan, ext string) string { return filepath.Join(stateDir, plan+"."+ext) }

// lockPlan takes the plan's lock, so that it runs once at a time, and
// clears what a run before left.
func lockPlan(stateDir, plan string) (*os.File, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("plan state directory: %w", err)
	}
	f, err := os.OpenFile(planFile(stateDir, plan, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("plan %s is running already (%s is locked)", plan, f.Name())
	}
	os.Remove(planFile(stateDir, plan, "waiting"))
	os.Remove(planFile(stateDir, plan, "continue"))
	return f, nil
}

// pollInterval is how often a waiting plan looks for drfs plan continue.
const pollInterval = 200 * time.Millisecond

// waitManual shows a manual step and waits for drfs plan continue.
func waitManual(ctx context.Context, stateDir, plan string, s orchestrator.PlanStep, what string) error {
	tok := make([]byte, 8)
	rand.Read(tok)
	w := planWait{Step: s.N, What: what, Message: s.Message, Token: hex.EncodeToString(tok), PID: os.Getpid()}
	data, _ := json.Marshal(w)
	waiting := planFile(stateDir, plan, "waiting")
	if err := writePlanFile(waiting, data); err != nil {
		return err
	}
	defer os.Remove(waiting)
	fmt.Fprintf(os.Stderr, "drfs: plan %s: manual step: %s\n", plan, s.Message)
	fmt.Fprintf(os.Stderr, "drfs: plan %s is waiting: when done, run drfs plan continue %s --state-dir %s\n", plan, plan, stateDir)
	cont := planFile(stateDir, plan, "continue")
	start := time.Now()
	for {
		if got, err := os.ReadFile(cont); err == nil && strings.TrimSpace(string(got)) == w.Token {
			os.Remove(cont)
			fmt.Fprintf(os.Stderr, "drfs: plan %s: continued after %v\n", plan, time.Since(start).Round(time.Second))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting at the manual step")
		case <-time.After(pollInterval):
		}
	}
}

func writePlanFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
