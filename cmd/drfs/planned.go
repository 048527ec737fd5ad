package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
)

// plannedResult is the JSON of a planned failover: the agent's job, whose
// message says what it did.
type plannedResult struct {
	VM     string                    `json:"vm"`
	Type   orchestrator.FailoverType `json:"type"`
	Dir    string                    `json:"dir,omitempty"`
	DryRun bool                      `json:"dry_run,omitempty"`
	Job    *orchestrator.Job         `json:"job,omitempty"`
}

// runPlanned asks the source's agent for a planned failover of c.VM: its
// writes held, its last generation shipped and checked against the disks,
// the replica materialised in c.To. The agent does it all: it holds the
// target open.
func (c *failoverStartCmd) runPlanned(ctx context.Context) (any, error) {
	if c.VM == "" || c.Plan != "" {
		return nil, errors.New("a planned failover names one VM (the agent protecting it runs it)")
	}
	res := plannedResult{VM: c.VM, Type: orchestrator.Planned, Dir: c.To, DryRun: c.DryRun}
	if c.DryRun && c.JSON {
		return res, nil
	}
	if c.DryRun {
		fmt.Printf("planned failover of %s: hold its writes%s, ship its last generation, check it against the disks chunk by chunk, materialise it in %s%s\n",
			c.VM, map[bool]string{true: " (after the stop hook)", false: ""}[c.StopHook != ""], c.To, map[bool]string{true: ", run the hook", false: ""}[c.Hook != ""])
		return nil, nil
	}
	cl := agent.NewClient(c.Socket)
	cl.SetTimeout(0) // the job takes as long as shipping and checking take
	done := make(chan struct{})
	go func() {
		// Show the job's progress while the request runs.
		bar := newProgressBar(os.Stderr)
		defer bar.done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if j, err := activeJob(cl, c.VM, orchestrator.JobFailover); err == nil {
					bar.show("failover "+c.VM, j.Progress, j.Message)
				}
			}
		}
	}()
	job, err := cl.Failover(agent.FailoverRequest{VM: c.VM, To: c.To, Hook: c.Hook, StopHook: c.StopHook})
	close(done)
	if err != nil {
		return nil, err
	}
	if !c.JSON {
		fmt.Printf("%s: %s\n", c.VM, job.Message)
	}
	res.Job = &job
	return res, nil
}

// activeJob returns vm's unfinished job of kind.
func activeJob(cl *agent.Client, vm string, kind orchestrator.JobKind) (orchestrator.Job, error) {
	jobs, err := cl.Jobs(vm)
	if err != nil {
		return orchestrator.Job{}, err
	}
	for _, j := range jobs {
		if j.Kind == kind && !j.State.Done() {
			return j, nil
		}
	}
	return orchestrator.Job{}, errors.New("none")
}

type commitCmd struct {
	VM string `arg:"" help:"VM whose failover to make final."`
	socketFlag
}

func (c *commitCmd) Run() error {
	var msg string
	if err := agent.NewClient(c.Socket).Post("commit", c.VM, &msg); err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}

type failoverCancelCmd struct {
	VM string `arg:"" help:"VM whose planned failover to undo (not committed yet): the source's writes and its replication go on."`
	socketFlag
}

func (c *failoverCancelCmd) Run() error {
	var msg string
	if err := agent.NewClient(c.Socket).Post("failover/cancel", c.VM, &msg); err != nil {
		return err
	}
	fmt.Printf("%s: failover cancelled; the source runs and replicates again\n", c.VM)
	return nil
}

type reprotectCmd struct {
	VM       string `arg:"" help:"VM failed over and committed, to replicate back from the recovery site."`
	Reverse  string `required:"" placeholder:"URL" help:"Target at this site that the recovery site replicates back into (a directory this site serves with drfs target serve)."`
	SourceID string `name:"reverse-source-id" required:"" placeholder:"NAME" help:"The recovery site's identity on that target (its agent's source-id, or its certificate's CommonName through drfs target serve)."`
	socketFlag
}

func (c *reprotectCmd) Run() error {
	cl := agent.NewClient(c.Socket)
	cl.SetTimeout(0) // a copy of the disks
	var msg string
	if err := cl.Call("POST", "/v1/reprotect", agent.ReprotectRequest{VM: c.VM, Reverse: c.Reverse, SourceID: c.SourceID}, &msg); err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}

type failbackCmd struct {
	VM string `arg:"" help:"VM to bring home: the recovery site failed it over (planned) into the reverse target."`
	socketFlag
}

func (c *failbackCmd) Run() error {
	cl := agent.NewClient(c.Socket)
	cl.SetTimeout(0)
	var msg string
	if err := cl.Post("failback", c.VM, &msg); err != nil {
		return err
	}
	fmt.Println(msg)
	return nil
}
