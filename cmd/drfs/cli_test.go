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
	// Durations on the command line read as in the configuration: 7d.
	if out, err := drfsRun(t, "mount", "/nonexistent-source", t.TempDir(), "--state", t.TempDir(), "--retention", "7d"); err == nil || !strings.Contains(out, "source /nonexistent-source") {
		t.Errorf("drfs mount --retention 7d: %v, want the flags read and the missing source named:\n%s", err, out)
	}
	if out, err := drfsRun(t, "mount", "/nonexistent-source", t.TempDir(), "--state", t.TempDir(), "--retention", "7x"); err == nil || !strings.Contains(out, `"7x" is not a duration`) {
		t.Errorf("drfs mount --retention 7x: %v\n%s", err, out)
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

// TestMakeInstall: make install puts drfs, the unit (pointing at the
// installed binary and agent.yaml, Type=notify), the example configuration
// and the docs the unit names under DESTDIR, keeps an existing
// configuration, and says that an agent.conf from before YAML is not read.
func TestMakeInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drfs")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dest := t.TempDir()
	os.MkdirAll(dest+"/etc/drfs", 0o755)
	os.WriteFile(dest+"/etc/drfs/agent.yaml", []byte("# mine\n"), 0o600)
	os.WriteFile(dest+"/etc/drfs/agent.conf", []byte("# old\n"), 0o600)
	cmd := exec.Command("make", "-C", "../..", "install", "DESTDIR="+dest, "PREFIX=/usr")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "/etc/drfs/agent.conf is not read any more") {
		t.Errorf("make install says nothing of agent.conf:\n%s", out)
	}
	unit, err := os.ReadFile(dest + "/etc/systemd/system/drfs-agent.service")
	if err != nil || !strings.Contains(string(unit), "ExecStart=/usr/bin/drfs agent --config /etc/drfs/agent.yaml ") || !strings.Contains(string(unit), "Type=notify") {
		t.Errorf("installed unit: %v\n%s", err, unit)
	}
	for _, f := range []string{"/usr/bin/drfs", "/usr/share/doc/drfs/agent.md", "/usr/share/doc/drfs/agent.yaml.example", "/usr/share/doc/drfs/tls.md"} {
		if _, err := os.Stat(dest + f); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if b, _ := os.ReadFile(dest + "/etc/drfs/agent.yaml"); string(b) != "# mine\n" {
		t.Errorf("make install replaced an existing configuration:\n%s", b)
	}
}
