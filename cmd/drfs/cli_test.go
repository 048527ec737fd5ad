package main

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// TestCommandLine: --version, one-line usage errors with exit code 2, and
// shell completion answered by the binary itself.
func TestCommandLine(t *testing.T) {
	out, err := drfsRun(t, "--version")
	if err != nil || !strings.HasPrefix(out, "drfs ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("drfs --version: %v\n%s", err, out)
	}
	for _, args := range [][]string{{"bogus"}, {"status", "--nope"}, {"pki", "server"}} {
		out, err := drfsRun(t, args...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "--help") {
			t.Errorf("drfs %v: %v, want exit %d and one line pointing to --help:\n%s", args, err, exitUsage, out)
		}
	}
	for shell, want := range map[string]string{"bash": "complete -C", "zsh": "bashcompinit"} {
		if out, err := drfsRun(t, "completion", shell); err != nil || !strings.Contains(out, want) {
			t.Errorf("drfs completion %s: %v\n%s", shell, err, out)
		}
	}
	for line, want := range map[string]string{"drfs pki h": "host", "drfs sta": "status", "drfs status --ch": "--check"} {
		cmd := exec.Command(drfsBin)
		cmd.Env = append(os.Environ(), "COMP_LINE="+line)
		out, err := cmd.Output()
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("completing %q: %v, got %q, want %q", line, err, out, want)
		}
	}
}
