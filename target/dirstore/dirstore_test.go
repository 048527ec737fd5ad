package dirstore_test

import (
	"testing"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/dirstore"
	"github.com/drfs-project/drfs/target/storetest"
)

func TestStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) target.Store {
		st, err := dirstore.Open(t.TempDir(), dirstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	})
}
