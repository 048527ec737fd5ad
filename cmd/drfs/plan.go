package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

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
	targets.TLS
}

func (c *planValidateCmd) Run() error {
	plan, err := loadPlan(c.File)
	if err != nil {
		return err
	}
	if c.Target != "" {
		store, err := targets.OpenExisting(c.Target, c.TLS)
		if err != nil {
			return err
		}
		defer store.Close()
		known, err := store.VMs(context.Background())
		if err != nil {
			return fmt.Errorf("VMs on %s: %w", c.Target, err)
		}
		if err := plan.CheckVMs(known); err != nil {
			return err
		}
	}
	fmt.Printf("plan %s is valid: %d group(s), VMs %s\n", plan.Name, len(plan.Groups), strings.Join(plan.VMs(), " "))
	for _, s := range plan.Steps() {
		fmt.Printf("%d. %s\n", s.N, plan.Describe(s))
	}
	return nil
}

type planContinueCmd struct {
	Plan     string `arg:"" help:"Name of the plan (its name: line)."`
	StateDir string `default:"/var/lib/drfs/plans" type:"path" placeholder:"DIR" help:"State directory the plan runs with (drfs failover --state-dir)."`
}

func (c *planContinueCmd) Run() error {
	if err := orchestrator.CheckPlanName(c.Plan); err != nil {
		return err
	}
	data, err := os.ReadFile(planFile(c.StateDir, c.Plan, "waiting"))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("plan %s is not waiting at a manual step (nothing in %s)", c.Plan, c.StateDir)
	}
	if err != nil {
		return err
	}
	var w planWait
	if err := json.Unmarshal(data, &w); err != nil {
		return fmt.Errorf("plan %s: %w", c.Plan, err)
	}
	// The runner holds the lock while it waits; a free lock is a run that died.
	if f, err := os.Open(planFile(c.StateDir, c.Plan, "lock")); err == nil {
		free := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil
		f.Close()
		if free {
			return fmt.Errorf("plan %s is not running (its run stopped while waiting at step %d): run it again", c.Plan, w.Step)
		}
	}
	if err := writePlanFile(planFile(c.StateDir, c.Plan, "continue"), []byte(w.Token+"\n")); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "drfs: plan %s continues after step %d (%s)\n", c.Plan, w.Step, w.What)
	return nil
}
