package main

import (
	"strings"
	"testing"

	"github.com/drfs-project/drfs/agent"
	"github.com/drfs-project/drfs/orchestrator"
)

// TestVerifyHint: the repair hint of a VM that diverges names the drfs
// resync that applies to how the VM runs.
func TestVerifyHint(t *testing.T) {
	const sock, tgt = "/run/drfs/agent.sock", "dir:///srv/replicas"
	view := func(vm string, st orchestrator.State) agent.VMView {
		v := agent.VMView{Target: "https://dr:8443", StateDir: "/var/lib/drfs"}
		v.VM, v.State = vm, st
		return v
	}
	views := []agent.VMView{view("vm1", orchestrator.Protected), view("vm2", orchestrator.Unprotected)}
	cases := []struct {
		name     string
		vm       string
		answered bool
		want     []string
		not      []string
	}{
		{"protected by the agent", "vm1", true,
			[]string{"protected by the drfs agent on " + sock + " (to https://dr:8443)", "drfs resync /var/lib/drfs vm1 --now"},
			[]string{"STATEDIR", "drfs mount", "drfs protect"}},
		{"in the agent's source, not protected", "vm2", true,
			[]string{"drfs resync STATEDIR vm2 --now", "--target " + tgt, "drfs protect vm2 --target " + tgt},
			[]string{"/var/lib/drfs"}},
		{"unknown to the agent", "vm3", true,
			[]string{"drfs resync STATEDIR vm3 --now", "does not know vm3"},
			[]string{"drfs protect", "AGENT_STATEDIR"}},
		{"no agent answers", "vm1", false,
			[]string{"no drfs agent answers on " + sock, "under the drfs agent: drfs resync AGENT_STATEDIR vm1 --now", "under a plain mount:  drfs resync STATEDIR vm1 --now"},
			[]string{"/var/lib/drfs"}},
	}
	for _, c := range cases {
		var vs []agent.VMView
		if c.answered {
			vs = views
		}
		got := hintFor(c.vm, tgt, sock, vs, c.answered)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: no %q in %q", c.name, w, got)
			}
		}
		for _, n := range c.not {
			if strings.Contains(got, n) {
				t.Errorf("%s: %q in %q", c.name, n, got)
			}
		}
	}
}
