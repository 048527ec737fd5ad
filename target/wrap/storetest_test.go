package wrap

import (
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestStoreContract: a directory store behind both wrappers still keeps
// the Store contract, its Checksummer capability included.
func TestStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) target.Store {
		st, err := dirstore.Open(t.TempDir(), dirstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		w := Retry(RateLimit(st, 1<<30), Policy{}, nil)
		if _, ok := w.(target.Checksummer); !ok {
			t.Fatal("the wrapped directory store is not a target.Checksummer")
		}
		return w
	})
}

func TestUnwrappedCapabilities(t *testing.T) {
	if _, ok := Retry(RateLimit(discardStore{}, 1<<20), Policy{}, nil).(target.Checksummer); ok {
		t.Fatal("a store without Checksums became a target.Checksummer")
	}
}
