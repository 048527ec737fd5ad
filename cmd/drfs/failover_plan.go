package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

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

	failed, took, err := recovery.RunPlan(ctx, recovery.PlanOptions{Plan: plan, Type: typ, TargetURL: c.Target, Dir: c.To,
		StateDir: c.StateDir, HookOut: c.hookOutput(), Jobs: jobs})
	if failed == 0 && err != nil {
		return nil, err // before the first step
	}
	return planReport(c, plan, typ, jobs, failed, err, took), err
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
