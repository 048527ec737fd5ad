// Command drfs is the disaster-recovery layer for virtual machine disks: a
// tracking mount that logs every changed block, and the commands around it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/alecthomas/kong"
	"github.com/willabides/kongplete"

	"github.com/drfs-project/drfs/internal/units"
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
	Points    pointsCmd    `cmd:"" help:"List the recovery points of VMs on a target (drfs points mount: look into one read-only)."`
	Restore   restoreCmd   `cmd:"" help:"Write a VM's disks as they were at a recovery point into a directory."`
	Failover  failoverCmd  `cmd:"" help:"Fail a VM or a recovery plan over to its replica (unplanned, or a test copy); drfs failover cleanup removes a test copy."`
	Plan      planCmd      `cmd:"" help:"Check a recovery plan file (validate), or let a running plan go on past a manual step (continue)."`
	Verify    verifyCmd    `cmd:"" help:"Compare a VM's disks with a recovery point chunk by chunk, changing nothing."`
	Resync    resyncCmd    `cmd:"" help:"Resynchronize a VM's disks with the target now (on a running mount)."`
	Target    targetCmd    `cmd:"" help:"Serve replicas to source hosts: the recovery site's end of replication."`
	PKI       pkiCmd       `cmd:"" name:"pki" help:"Make the certificates of a two-site setup: a CA, the target's server certificate, each source host's client certificate."`
	Bench     benchCmd     `cmd:"" help:"Run benchmarks."`
	Version   versionCmd   `cmd:"" help:"Print the version and the commit it was built from."`
	Complete  completeCmd  `cmd:"" name:"completion" help:"Print the shell completion script for bash or zsh (eval it, or put it in your shell's startup file)."`

	VersionFlag kong.VersionFlag `name:"version" help:"Print the version and the commit it was built from, and exit."`
}

// version is the release; -ldflags "-X main.version=v1.2.3" sets it.
var version = "dev"

type versionCmd struct{}

func (versionCmd) Run() error {
	fmt.Println(versionString())
	return nil
}

// versionString is "drfs VERSION (commit REV, TIME[, modified])", the
// commit from the build information the go command records.
func versionString() string {
	s := "drfs " + version
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return s
	}
	if version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		s = "drfs " + info.Main.Version
	}
	var rev, at, modified string
	for _, kv := range info.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.time":
			at = kv.Value
		case "vcs.modified":
			if kv.Value == "true" {
				modified = ", modified"
			}
		}
	}
	if rev != "" {
		s += fmt.Sprintf(" (commit %.12s, %s%s)", rev, at, modified)
	}
	return s + ", " + info.GoVersion
}

// Exit codes of every command (docs: README, "Exit codes").
const (
	exitError   = 1 // the command failed; the message says why
	exitUsage   = 2 // the command line is wrong
	exitWarning = 3 // drfs status --check: a VM's health is Warning
	exitCrit    = 4 // drfs status --check: a VM's health is Critical
)

// durationMapper reads every duration flag as the configuration does:
// Go's durations with whole days in front (7d, 1d12h).
var durationMapper = kong.MapperFunc(func(ctx *kong.DecodeContext, target reflect.Value) error {
	var s string
	if err := ctx.Scan.PopValueInto("duration", &s); err != nil {
		return err
	}
	d, err := units.ParseDuration(s)
	if err != nil {
		return err
	}
	target.SetInt(int64(d))
	return nil
})

// exitCode is an error that ends drfs with a given status, printing err if
// it is not nil.
type exitCode struct {
	code int
	err  error
}

func (e exitCode) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

// printJSON writes v to standard output as indented JSON, the --json form
// of every read command.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func main() {
	startOneShotLog()
	var c cli
	parser, err := kong.New(&c,
		kong.Name("drfs"),
		kong.Description("drfs replicates virtual machine disk images, block by block, to a recovery site."),
		kong.Vars{"version": versionString()},
		kong.TypeMapper(reflect.TypeFor[time.Duration](), durationMapper),
	)
	if err != nil {
		panic(err) // the command line's declaration is wrong
	}
	kongplete.Complete(parser) // answers the shell when it asks for completions
	ctx, err := parser.Parse(os.Args[1:])
	if err != nil {
		// One line, not a page of help.
		fmt.Fprintf(os.Stderr, "drfs: %v (drfs --help, or drfs COMMAND --help, shows the usage)\n", err)
		os.Exit(exitUsage)
	}
	stop := profileFromEnv(ctx.Command())
	err = ctx.Run()
	stop()
	var code exitCode
	switch {
	case errors.As(err, &code):
		if code.err != nil {
			printError(code.err)
		}
		os.Exit(code.code)
	case err != nil:
		printError(err)
		os.Exit(exitError)
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
