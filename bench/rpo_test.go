package bench

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestRunRPO runs the RPO benchmark small with the built drfs, so that the
// harness keeps working: an agent protecting a VM through a real mount,
// shipping to a target server over TLS, a paced writer, and RPO samples
// taken from the agent. It checks the harness, not the speed.
func TestRunRPO(t *testing.T) {
	needFUSE(t)
	bin := buildDrfs(t)
	rep, err := RunRPO(context.Background(), RPOConfig{
		Binary: bin, Dir: t.TempDir(), DiskSize: 256 << 20, Region: 32 << 20,
		Rates: []int{2}, Duration: 8 * time.Second, Interval: 2 * time.Second, Compress: "none", MaxGeneration: "1MiB",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) != 1 {
		t.Fatalf("%d phases, want 1", len(rep.Cases))
	}
	c := rep.Cases[0]
	if c.Samples == 0 || c.AchievedMBps <= 0 || c.P50 <= 0 || c.P99 < c.P50 || c.Max < c.P99 || c.AgentCPU <= 0 {
		t.Errorf("phase: %+v", c)
	}
	// Points every 2 s: the RPO of a working agent stays far below the phase.
	if c.Max >= 8*time.Second+rep.Interval*5 {
		t.Errorf("RPO reached %v with an interval of %v: the agent did not ship", c.Max, rep.Interval)
	}
	if rep.AgentPeakRSS <= 0 || rep.ServerPeakRSS <= 0 {
		t.Errorf("peak RSS: agent %d, server %d", rep.AgentPeakRSS, rep.ServerPeakRSS)
	}
	if s := rep.String(); !strings.Contains(s, "--compress none") || !strings.Contains(s, "--max-generation 1MiB") {
		t.Errorf("report does not name the compression and the cut size:\n%s", s)
	}
}
