package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/drfs-project/drfs/internal/recovery"
	"github.com/drfs-project/drfs/internal/targets"
	"github.com/drfs-project/drfs/orchestrator"
)

// planCmd groups the recovery plan commands; drfs failover --plan runs one.
type planCmd struct {
	Validate planValidateCmd `cmd:"" help:"Check a recovery plan file, and with --target that its VMs are there; print its steps."`
	Continue planContinueCmd `cmd:"" help:"Let a running plan go on past the manual step it waits at."`
}

type planValidateCmd struct {
	File   string `arg:"" type:"existingfile" help:"Recovery plan (YAML, docs/failover.md)."`
	Target string `env:"DRFS_TARGET" placeholder:"URL" help:"Also check that every VM of the plan is on this target."`
	JSON   bool   `help:"Print the plan's groups, VMs and steps, or the problems found, as JSON (the exit status is the same: 1 for a plan with mistakes)."`
	targets.TLS
}

// planValidation is the JSON of drfs plan validate.
type planValidation struct {
	File     string          `json:"file"`
	Name     string          `json:"name,omitempty"`
	Valid    bool            `json:"valid"`
	Target   string          `json:"target,omitempty"` // checked to hold every VM
	Groups   []planGroupJSON `json:"groups"`
	VMs      []string        `json:"vms"`
	Steps    []planStepJSON  `json:"steps"`
	Problems []planProblem   `json:"problems"`
}

// planGroupJSON is a group of a plan.
type planGroupJSON struct {
	Name string   `json:"name"`
	Line int      `json:"line"`
	VMs  []string `json:"vms"`
}

// planStepJSON is a step of a plan, in the order it runs.
type planStepJSON struct {
	N           int                   `json:"n"`
	Group       string                `json:"group"`
	Kind        orchestrator.StepKind `json:"kind"`
	Phase       string                `json:"phase,omitempty"` // of a hook or manual step: pre or post
	Command     string                `json:"command,omitempty"`
	Message     string                `json:"message,omitempty"`
	VMs         []string              `json:"vms,omitempty"`
	Description string                `json:"description"`
	// Status (drfs failover --plan) is done, failed or not_run.
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

// planProblem is a mistake found in a plan, at a line (0: the whole file).
type planProblem struct {
	Line    int    `json:"line,omitempty"`
	Message string `json:"message"`
}

func planStep(plan *orchestrator.Plan, s orchestrator.PlanStep) planStepJSON {
	return planStepJSON{N: s.N, Group: plan.Groups[s.Group].Name, Kind: s.Kind, Phase: s.Phase, Command: s.Command,
		Message: s.Message, VMs: s.VMs, Description: plan.Describe(s)}
}

func (c *planValidateCmd) Run() error {
	res, mistakes, err := c.validate()
	if err != nil {
		return err
	}
	if c.JSON {
		if err := printJSON(res); err != nil {
			return err
		}
		if !res.Valid {
			return exitCode{code: exitError, err: fmt.Errorf("%s: %d mistake(s)", c.File, len(res.Problems))}
		}
		return nil
	}
	if mistakes != nil {
		return mistakes
	}
	fmt.Printf("plan %s is valid: %d group(s), VMs %s\n", res.Name, len(res.Groups), strings.Join(res.VMs, " "))
	for _, s := range res.Steps {
		fmt.Printf("%d. %s\n", s.N, s.Description)
	}
	return nil
}

// validate checks the plan file, and with a target that it holds the
// plan's VMs. mistakes is the error that says what is wrong with the plan
// (nil for a valid one); err is one that stopped the check.
func (c *planValidateCmd) validate() (res planValidation, mistakes, err error) {
	res = planValidation{File: c.File, Groups: []planGroupJSON{}, VMs: []string{}, Steps: []planStepJSON{}, Problems: []planProblem{}}
	plan, errs, err := parsePlanFile(c.File)
	if err != nil {
		return res, nil, err
	}
	if len(errs) > 0 {
		addProblems(&res, errs)
		if !c.JSON {
			mistakes = reportMistakes(c.File, errs) // each on stderr
		}
		return res, mistakes, nil
	}
	res.Name, res.VMs = plan.Name, plan.VMs()
	for _, g := range plan.Groups {
		res.Groups = append(res.Groups, planGroupJSON{Name: g.Name, Line: g.Line, VMs: g.VMs})
	}
	for _, s := range plan.Steps() {
		res.Steps = append(res.Steps, planStep(plan, s))
	}
	if c.Target != "" {
		store, err := targets.OpenExisting(c.Target, c.TLS)
		if err != nil {
			return res, nil, err
		}
		defer store.Close()
		known, err := store.VMs(context.Background())
		if err != nil {
			return res, nil, fmt.Errorf("VMs on %s: %w", c.Target, err)
		}
		res.Target = recovery.RedactURL(c.Target)
		if mistakes = plan.CheckVMs(known); mistakes != nil {
			var errs []error
			if j, ok := mistakes.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			addProblems(&res, errs)
			return res, mistakes, nil
		}
	}
	res.Valid = true
	return res, nil, nil
}

// addProblems adds the mistakes errs to res.
func addProblems(res *planValidation, errs []error) {
	for _, e := range errs {
		var pe *orchestrator.PlanError
		if errors.As(e, &pe) {
			res.Problems = append(res.Problems, planProblem{Line: pe.Line, Message: pe.Msg})
		} else {
			res.Problems = append(res.Problems, planProblem{Message: e.Error()})
		}
	}
}

type planContinueCmd struct {
	Plan     string `arg:"" help:"Name of the plan (its name: line)."`
	StateDir string `default:"/var/lib/drfs/plans" type:"path" placeholder:"DIR" help:"State directory the plan runs with (drfs failover --state-dir)."`
}

func (c *planContinueCmd) Run() error {
	if err := orchestrator.CheckPlanName(c.Plan); err != nil {
		return err
	}
	data, err := os.ReadFile(recovery.PlanFile(c.StateDir, c.Plan, "waiting"))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("plan %s is not waiting at a manual step (nothing in %s)", c.Plan, c.StateDir)
	}
	if err != nil {
		return err
	}
	var w recovery.PlanWait
	if err := json.Unmarshal(data, &w); err != nil {
		return fmt.Errorf("plan %s: %w", c.Plan, err)
	}
	// The runner holds the lock while it waits; a free lock is a run that died.
	if f, err := os.Open(recovery.PlanFile(c.StateDir, c.Plan, "lock")); err == nil {
		free := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
		f.Close()
		if free {
			return fmt.Errorf("plan %s is not running (its run stopped while waiting at step %d): run it again", c.Plan, w.Step)
		}
	}
	if err := recovery.WritePlanFile(recovery.PlanFile(c.StateDir, c.Plan, "continue"), []byte(w.Token+"\n")); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "drfs: plan %s continues after step %d (%s)\n", c.Plan, w.Step, w.What)
	return nil
}
