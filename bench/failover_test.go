package bench

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestRunFailover runs the failover benchmark small with the built drfs:
// both failed-over disks must equal the source at their point, and the
// failback comparison must catch every block changed at the recovery site
// while sending far less than the disk.
func TestRunFailover(t *testing.T) {
	bin := buildDrfs(t)
	rep, err := RunFailover(context.Background(), FailoverOptions{
		Dir: t.TempDir(), Size: 16 << 20, Churn: 0.01, Generations: 3, Seed: 5, Drfs: bin,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) != 2 {
		t.Fatalf("%d cases, want 2", len(rep.Cases))
	}
	for _, c := range rep.Cases {
		if !c.Equal {
			t.Errorf("failover to %s: the disk differs from the source at point %d", c.Name, c.Point)
		}
	}
	fb := rep.Failback
	if fb == nil {
		t.Fatal("no failback figures")
	}
	if !fb.AllCaught || fb.Changed == 0 || fb.Ranges < fb.Changed || fb.Wire >= fb.DiskSize/4 {
		t.Errorf("failback: %+v; want every changed block caught, ranges >= changed, wire well below the disk", *fb)
	}
	var out bytes.Buffer
	if err := rep.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "reprotect sends") {
		t.Errorf("table has no failback line:\n%s", out.String())
	}
}
