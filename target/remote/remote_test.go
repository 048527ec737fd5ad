package remote_test

import (
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestStore runs the conformance suite on a Client talking to a Server over
// loopback TLS, in front of a directory store.
func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) target.Store {
		ts := startServer(t)
		return ts.client(t, ts.pki.ClientA, "")
	})
}
