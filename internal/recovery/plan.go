package recovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/drfs-project/drfs/orchestrator"
	"golang.org/x/sys/unix"
)

// PlanOptions are what RunPlan runs a recovery plan with.
type PlanOptions struct {
	Plan      *orchestrator.Plan
	Type      orchestrator.FailoverType
	TargetURL string
	Dir       string // each VM goes to Dir/VM
	// StateDir holds the rendezvous of the manual steps (drfs plan
	// continue) and the plan's lock.
	StateDir string
	HookOut  io.Writer // the hooks' standard output; nil: standard output
	// Jobs holds the failover of each VM of the plan, its point chosen,
	// into Dir/VM (which must not exist).
	Jobs map[string]*Failover
}

// RunPlan fails the VMs of a plan over, group after group, with the plan's
// hooks and manual steps between, once at a time (LockPlan). Dir is
// created if missing and gets the plan's marker. A failed step stops the
// plan: RunPlan returns its number (0 when every step ran) and how long
// the run took, its error an *orchestrator.PlanFailure that says what was
// done.
func RunPlan(ctx context.Context, o PlanOptions) (failed int, took time.Duration, err error) {
	plan := o.Plan
	lock, err := LockPlan(o.StateDir, plan.Name)
	if err != nil {
		return 0, 0, err
	}
	defer lock.Close()
	created, err := MakeDir(o.Dir)
	if err != nil {
		return 0, 0, err
	}
	if err := WriteMarker(o.Dir, Marker{Type: o.Type, Target: RedactURL(o.TargetURL), Time: time.Now().UTC(), Plan: plan.Name, VMs: plan.VMs()}); err != nil {
		if created {
			os.RemoveAll(o.Dir)
		}
		return 0, 0, err
	}
	start := time.Now()
	run := orchestrator.NewPlanRun(plan)
	for {
		s, ok := run.Next()
		if !ok {
			break
		}
		slog.Info(fmt.Sprintf("plan %s [%d/%d] %s", plan.Name, s.N, run.Len(), plan.Describe(s)))
		g := plan.Groups[s.Group]
		var err error
		switch s.Kind {
		case orchestrator.StepHook:
			_, err = RunHook(ctx, s.Command, []string{
				"DRFS_PLAN=" + plan.Name,
				"DRFS_GROUP=" + g.Name,
				"DRFS_FAILOVER_TYPE=" + string(o.Type),
				"DRFS_DIR=" + o.Dir,
				"DRFS_VMS=" + strings.Join(g.VMs, " "),
			}, o.HookOut)
			if err == nil {
				run.Record(fmt.Sprintf("%s %s hook ran: %s", g.Name, s.Phase, s.Command))
			}
		case orchestrator.StepManual:
			err = waitManual(ctx, o.StateDir, plan.Name, s, plan.Describe(s))
			if err == nil {
				run.Record(fmt.Sprintf("%s %s manual step continued: %s", g.Name, s.Phase, s.Message))
			}
		case orchestrator.StepFailover:
			err = failoverGroup(ctx, s.VMs, o.Jobs, run)
		}
		if err != nil {
			return s.N, time.Since(start), run.Fail(err)
		}
		run.Done()
	}
	slog.Info(fmt.Sprintf("plan %s done in %v: %d steps, VMs %s in %s", plan.Name, time.Since(start).Round(time.Millisecond), run.Len(), strings.Join(plan.VMs(), " "), o.Dir))
	return 0, time.Since(start), nil
}

// failoverGroup fails the VMs of a group over in parallel, each into its
// own directory, and records each that succeeded.
func failoverGroup(ctx context.Context, vms []string, jobs map[string]*Failover, run *orchestrator.PlanRun) error {
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

// The rendezvous of a manual step, in the state directory:
//
//	PLAN.lock      flock(2)ed by the process that runs the plan
//	PLAN.waiting   the step it waits at (JSON: step, message, token, pid)
//	PLAN.continue  written by drfs plan continue: the token it saw
//
// The runner polls for PLAN.continue with its token, removes both files
// and goes on. A stale file of a run that died is ignored: continue needs
// the lock held, and a new run removes what an old one left.
type PlanWait struct {
	Step    int    `json:"step"`
	What    string `json:"what"`
	Message string `json:"message"`
	Token   string `json:"token"`
	PID     int    `json:"pid"`
}

// PlanFile is the file of plan with extension ext in stateDir.
func PlanFile(stateDir, plan, ext string) string { return filepath.Join(stateDir, plan+"."+ext) }

// LockPlan takes the plan's lock, so that it runs once at a time, and
// clears what a run before left.
func LockPlan(stateDir, plan string) (*os.File, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("plan state directory: %w", err)
	}
	f, err := os.OpenFile(PlanFile(stateDir, plan, "lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("plan %s is running already (%s is locked)", plan, f.Name())
	}
	os.Remove(PlanFile(stateDir, plan, "waiting"))
	os.Remove(PlanFile(stateDir, plan, "continue"))
	return f, nil
}

// pollInterval is how often a waiting plan looks for drfs plan continue.
const pollInterval = 200 * time.Millisecond

// waitManual shows a manual step and waits for drfs plan continue.
func waitManual(ctx context.Context, stateDir, plan string, s orchestrator.PlanStep, what string) error {
	tok := make([]byte, 8)
	rand.Read(tok)
	w := PlanWait{Step: s.N, What: what, Message: s.Message, Token: hex.EncodeToString(tok), PID: os.Getpid()}
	data, _ := json.Marshal(w)
	waiting := PlanFile(stateDir, plan, "waiting")
	if err := WritePlanFile(waiting, data); err != nil {
		return err
	}
	defer os.Remove(waiting)
	slog.Info(fmt.Sprintf("plan %s: manual step: %s", plan, s.Message))
	slog.Info(fmt.Sprintf("plan %s is waiting: when done, run drfs plan continue %s --state-dir %s", plan, plan, stateDir))
	cont := PlanFile(stateDir, plan, "continue")
	start := time.Now()
	for {
		if got, err := os.ReadFile(cont); err == nil && strings.TrimSpace(string(got)) == w.Token {
			os.Remove(cont)
			slog.Info(fmt.Sprintf("plan %s: continued after %v", plan, time.Since(start).Round(time.Second)))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted while waiting at the manual step")
		case <-time.After(pollInterval):
		}
	}
}

// WritePlanFile replaces path with data, atomically.
func WritePlanFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
