package bench

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestRunResync runs the resync benchmark on a small image so that it
// keeps working: both cases find, send and verify the change.
func TestRunResync(t *testing.T) {
	if _, err := exec.LookPath("rsync"); err != nil {
		t.Skip("needs rsync, the baseline")
	}
	rep, err := RunResync(context.Background(), ResyncOptions{Dir: t.TempDir(), Size: 64 << 20, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Cases {
		if !c.Verified {
			t.Errorf("%s: the replica does not equal the source after the resync", c.Name)
		}
		if c.DrfsData < c.ChangedBytes/2 || c.DrfsData > 2*c.ChangedBytes {
			t.Errorf("%s: %d bytes of chunks sent for %d changed", c.Name, c.DrfsData, c.ChangedBytes)
		}
		if c.RsyncSent <= 0 {
			t.Errorf("%s: rsync's statistics were not read", c.Name)
		}
	}
	var b strings.Builder
	rep.WriteTable(&b)
	t.Log("\n" + b.String())
}
