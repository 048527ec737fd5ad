package target_test

import (
	"testing"

	"github.com/drfs-project/drfs/internal/frame"
	"github.com/drfs-project/drfs/target"
)

// The contract's name limit is what a frame stream carries.
func TestMaxNameLen(t *testing.T) {
	if target.MaxNameLen != frame.MaxNameLen {
		t.Fatalf("target.MaxNameLen %d, frame.MaxNameLen %d", target.MaxNameLen, frame.MaxNameLen)
	}
}
