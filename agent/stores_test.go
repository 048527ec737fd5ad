package agent

import (
	"path/filepath"
	"testing"

	"github.com/drfs-project/drfs/shipper"
)

// The agent's upload limit is one per target: every VM replicating to a
// target stages through the same limited store, and without a limit the
// shipper stages to the store itself.
func TestStoreCacheShipping(t *testing.T) {
	url := "dir://" + filepath.Join(t.TempDir(), "dr")
	open := storeCache{}
	defer open.closeAll()
	if s, err := open.shipping(url); s != nil || err != nil {
		t.Fatalf("no limit: shipping store %v, %v; want none", s, err)
	}

	limited := storeCache{bandwidth: shipper.Bandwidth(1 << 20)}
	defer limited.closeAll()
	a, err := limited.shipping(url)
	if err != nil || a == nil {
		t.Fatalf("shipping: %v, %v", a, err)
	}
	raw, err := limited.get(url)
	if err != nil {
		t.Fatal(err)
	}
	if a == raw {
		t.Error("the shipping store is the target itself: no limit")
	}
	if b, _ := limited.shipping(url); b != a {
		t.Error("two VMs of one target got two limits")
	}
	limited.closeAll()
	if c, err := limited.shipping(url); err != nil || c == a {
		t.Errorf("after closeAll: %v, %v; want a new limited store", c, err)
	}
}
