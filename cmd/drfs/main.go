// Command drfs is the disaster-recovery layer for virtual machine disks: a
// tracking mount that logs every changed block, and the commands around it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/alecthomas/kong"
)

// cli is the whole command line; each command lives in its own file.
type cli struct {
	Agent     agentCmd     `cmd:"" help:"Run the agent: the tracking mount and the protection of the VMs drfs protect names."`
	Protect   protectCmd   `cmd:"" help:"Protect a VM: prerequisite checks, initial replication, then delta replication every interval (agent)."`
	Unprotect unprotectCmd `cmd:"" help:"Stop protecting a VM; its recovery points on the target are kept (agent)."`
	Resume    resumeCmd    `cmd:"" help:"Let a VM stopped by a non-recoverable error replicate again (agent)."`
	Commit    commitCmd    `cmd:"" help:"Make a planned failover final; older recovery points are released (agent)."`
	Reprotect reprotectCmd `cmd:"" help:"After a commit, replicate the VM back: its disks as failed over seed a target here that the recovery site protects it into (agent)."`
	Failback  failbackCmd  `cmd:"" help:"Bring a reverse-replicated VM home: the last point of the recovery site is written into its disks, then protection resumes (agent)."`
	Jobs      jobsCmd      `cmd:"" help:"List the agent's jobs, or follow one (drfs jobs watch ID)."`
	Mount     mountCmd     `cmd:"" help:"Mount a directory of disk images through the tracking mount."`
	Log       logCmd       `cmd:"" help:"Show the change log of a state directory: generations, blocks, bytes, resync flags."`
	Status    statusCmd    `cmd:"" help:"Show the protection of the agent VMs (state, health, RPO, log, next retry), or the replication of a running mount."`
	Rotate    rotateCmd    `cmd:"" help:"Freeze the active generation of a VM on a running mount."`
	Points    pointsCmd    `cmd:"" help:"List the recovery points of VMs on a target."`
	Restore   restoreCmd   `cmd:"" help:"Write a VM's disks as they were at a recovery point into a directory."`
	Failover  failoverCmd  `cmd:"" help:"Fail a VM or a recovery plan over to its replica (unplanned, or a test copy); drfs failover cleanup removes a test copy."`
	Plan      planCmd      `cmd:"" help:"Check a recovery plan file (validate), or let a running plan go on past a manual step (continue)."`
	Verify    verifyCmd    `cmd:"" help:"Compare a VM's disks with a recovery point chunk by chunk, changing nothing."`
	Resync    resyncCmd    `cmd:"" help:"Resynchronize a VM's disks with the target now (on a running mount)."`
	Target    targetCmd    `cmd:"" help:"Serve replicas to source hosts: the recovery site's end of replication."`
	PKI       pkiCmd       `cmd:"" name:"pki" help:"Make the certificates of a two-site setup: a CA, the target's server certificate, each source host's client certificate."`
	Bench     benchCmd     `cmd:"" help:"Run benchmarks."`
	Version   versionCmd   `cmd:"" help:"Print the version."`
}

var version = "dev"

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Println("drfs", version)
	return nil
}

// printJSON writes v to standard output as indented JSON, the --json form
// of every read command.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func main() {
	var c cli
	ctx := kong.Parse(&c,
		kong.Name("drfs"),
		kong.Description("drfs replicates virtual machine disk images, block by block, to a recovery site."),
		kong.UsageOnError(),
	)
	stop := profileFromEnv(ctx.Command())
	err := ctx.Run()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "drfs:", err)
		os.Exit(1)
	}
}

// profileFromEnv starts a CPU profile of the whole command when
// DRFS_CPUPROFILE is set, to PREFIX-COMMAND-PID.pprof: the benchmarks that
// start the agent and the target server as child processes pass it down, so
// each process profiles itself. It returns the function that ends it.
func profileFromEnv(command string) func() {
	prefix := os.Getenv("DRFS_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	name := strings.Join(strings.Fields(strings.ReplaceAll(command, "<", "")), "-")
	name = strings.NewReplacer(">", "", "/", "_").Replace(name)
	f, err := os.Create(fmt.Sprintf("%s-%s-%d.pprof", prefix, name, os.Getpid()))
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "drfs: DRFS_CPUPROFILE:", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}
