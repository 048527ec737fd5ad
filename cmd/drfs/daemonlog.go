package main

import (
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"

	"github.com/drfs-project/drfs/internal/logging"
)

// logFlags is the --log-level of the long-running commands: drfs agent,
// drfs mount and drfs target serve (docs/agent.md, "Logs").
type logFlags struct {
	LogLevel string `name:"log-level" enum:"debug,info,warn,error" default:"info" env:"DRFS_LOG_LEVEL" placeholder:"LEVEL" help:"Lowest level logged: debug, info, warn or error (default ${default})."`
}

// daemonLog is set once a long-running command logs through
// internal/logging (startLog): the code it shares with the one-shot
// commands then logs through it too (say), and main logs the command's
// final error there.
var daemonLog atomic.Bool

// startLog makes the handler of internal/logging, on standard error at
// the level of --log-level, the default logger: slog's functions and the
// standard log package (go-fuse's messages) write through it. It returns
// that logger.
func (f logFlags) startLog() *slog.Logger {
	level, err := logging.ParseLevel(f.LogLevel)
	if err != nil {
		level = slog.LevelInfo // kong allows only the levels ParseLevel reads
	}
	l := slog.New(logging.Stderr(level))
	slog.SetDefault(l)
	daemonLog.Store(true)
	return l
}

// startOneShotLog makes the default logger write as the one-shot
// commands print: "drfs: msg" on standard error ("drfs: warning: msg"
// for a warning), for what the engine's packages log through slog. A
// long-running command replaces it (startLog).
func startOneShotLog() {
	slog.SetDefault(slog.New(logging.NewHandler(os.Stderr, &logging.Options{Command: "drfs"})))
}

// printError prints the error a command ends with: through the log of a
// long-running command, where the journal keeps it as an error; as
// "drfs: err" on standard error otherwise.
func printError(err error) {
	if daemonLog.Load() {
		slog.Error(err.Error())
		return
	}
	fmt.Fprintln(os.Stderr, "drfs:", err)
}
