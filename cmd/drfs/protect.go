package main

import (
	"fmt"
	"os"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
)

type protectCmd struct {
	VM        string        `arg:"" help:"VM to protect: a folder (or one-disk image) of the agent's source directory. For a VM protected already, the settings given change in place."`
	Target    string        `placeholder:"URL" help:"Target to replicate to (default: the agent's target). For a VM protected already, another target moves its protection there: an initial copy (or a comparison with a replica it holds), the points on the old one kept."`
	Interval  time.Duration `help:"Replication interval, 1s to 24h (30s, 5m and 15m are the usual choices; default: the agent's, 5m)."`
	Retention time.Duration `help:"Keep recovery points this long, from the interval to 30 days (default: the agent's, 24h)."`
	MaxPoints int           `name:"max-points" help:"Keep at most this many recovery points (default: no limit but the retention)."`
	AppHook   string        `name:"app-consistent-hook" placeholder:"CMD" help:"Command run with DRFS_PHASE=freeze before a cut and DRFS_PHASE=thaw after it (DRFS_VM, DRFS_DISKS set), e.g. a script around virsh domfsfreeze/domfsthaw: that point is app-consistent."`
	AppEvery  time.Duration `name:"app-consistent-every" help:"How often the app-consistency hook makes an app-consistent point (at most once per interval; default 1h)."`
	Reset     []string      `placeholder:"SETTING" help:"For a VM protected already: give these settings back to the agent's configuration: interval, retention, max-points, app-consistent-hook, app-consistent-every, or all."`
	Wait      bool          `help:"Wait until the VM is Protected (or its protection fails), showing progress."`
	JSON      bool          `help:"Print the result as JSON: the job, and with --wait the VM's status at the end (progress goes to stderr)."`
	socketFlag
}

// protectResult is what drfs protect did: the enable-protection job it
// started and, with --wait, the VM as drfs status shows it once Protected.
type protectResult struct {
	VM     string            `json:"vm"`
	Job    *orchestrator.Job `json:"job,omitempty"` // none for a change of settings
	Status *agent.VMView     `json:"status,omitempty"`
	// Changed: what changed in the settings of a VM protected already
	// (no job then).
	Changed string `json:"settings_changed,omitempty"`
}

func (c *protectCmd) Run() error {
	if c.Interval < 0 || c.Retention < 0 || c.MaxPoints < 0 || c.AppEvery < 0 {
		return fmt.Errorf("--interval, --retention, --max-points and --app-consistent-every cannot be negative")
	}
	cl := agent.NewClient(c.Socket)
	ans, err := cl.Protect(agent.ProtectRequest{VM: c.VM, Target: c.Target,
		Policy: agent.Overrides{Interval: c.Interval, Retention: c.Retention, MaxPoints: c.MaxPoints, AppHook: c.AppHook, AppEvery: c.AppEvery},
		Reset:  c.Reset})
	if err != nil {
		return err
	}
	if ans.Changed != "" && ans.ID == 0 {
		// Protected already: its settings changed in place.
		if c.JSON {
			return printJSON(protectResult{VM: c.VM, Changed: ans.Changed})
		}
		fmt.Println(ans.Changed)
		return nil
	}
	job := ans.Job
	// Changed, with a job: moved to another target, protected anew there.
	res := protectResult{VM: c.VM, Job: &job, Changed: ans.Changed}
	out := os.Stdout
	if c.JSON {
		out = os.Stderr
	} else if ans.Changed != "" {
		fmt.Println(ans.Changed)
	} else {
		fmt.Printf("%s: %s\n", c.VM, job.Message)
		fmt.Printf("%s: initial replication started (follow it with drfs jobs --vm %s, or drfs status %s)\n", c.VM, c.VM, c.VM)
	}
	if c.Wait {
		st, err := waitProtected(cl, c.VM, out)
		if err != nil {
			return err
		}
		res.Status = &st
		if !c.JSON {
			fmt.Printf("%s: Protected; newest recovery point %s old\n", c.VM, time.Duration(st.RPO*float64(time.Second)).Round(time.Second))
		}
	}
	if c.JSON {
		return printJSON(res)
	}
	return nil
}

// waitProtected follows vm's jobs with a progress line on out until it is
// Protected, and returns its status then, or until its protection stops
// on an error.
func waitProtected(cl *agent.Client, vm string, out *os.File) (agent.VMView, error) {
	bar := newProgressBar(out)
	defer bar.done()
	for {
		v, err := cl.VMs(vm)
		if err != nil {
			return agent.VMView{}, err
		}
		if len(v) == 0 {
			return agent.VMView{}, fmt.Errorf("%s is not protected any more", vm)
		}
		st := v[0]
		switch {
		case st.State == orchestrator.Protected:
			bar.done()
			return st, nil
		case st.State == orchestrator.Unprotected:
			return agent.VMView{}, fmt.Errorf("%s is not protected any more", vm)
		case st.Stopped:
			return agent.VMView{}, fmt.Errorf("%s: protection stopped: %s", vm, st.Health.Reason)
		}
		if st.Job != nil {
			bar.show(fmt.Sprintf("%s %s", vm, st.Job.Kind), st.Job.Progress, st.Job.Message)
		} else {
			bar.show(vm+" "+st.Describe, 0, "")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type unprotectCmd struct {
	VM   string `arg:"" help:"VM whose protection to stop."`
	JSON bool   `help:"Print what was removed and kept as JSON."`
	socketFlag
}

func (c *unprotectCmd) Run() error {
	var res agent.UnprotectResult
	if err := agent.NewClient(c.Socket).Post("unprotect", c.VM, &res); err != nil {
		return err
	}
	if c.JSON {
		return printJSON(res)
	}
	fmt.Println(res)
	return nil
}

type resumeCmd struct {
	VM string `arg:"" help:"VM stopped by a non-recoverable error, once its cause is fixed."`
	socketFlag
}

func (c *resumeCmd) Run() error {
	var msg string
	if err := agent.NewClient(c.Socket).Post("resume", c.VM, &msg); err != nil {
		return err
	}
	fmt.Printf("%s: resumed; replication runs now\n", c.VM)
	return nil
}
