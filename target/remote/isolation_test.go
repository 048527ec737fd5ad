package remote_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/drfs-project/drfs/internal/tlstest"
	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// TestIsolation: two source hosts replicate a VM of the same name; neither
// sees, reads or changes the other's.
func TestIsolation(t *testing.T) {
	ts := startServer(t)
	a := ts.client(t, ts.pki.ClientA, "")
	b := ts.client(t, ts.pki.ClientB, "")
	rng := rand.New(rand.NewPCG(storetest.Seed(t), 7))

	ma, ga := storetest.NewVM(rng, "shared", "d", "e")
	if err := ga.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}
	g := ma.Next(2)
	g.RandomGen(rng, storetest.RandomOptions{Changes: 20})
	if err := g.Apply(ctx, a); err != nil {
		t.Fatal(err)
	}

	// B sees nothing of A's.
	if vms, err := b.VMs(ctx); err != nil || len(vms) != 0 {
		t.Fatalf("B's VMs = %q, %v; want none", vms, err)
	}
	if _, err := b.Points(ctx, "shared"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("B's Points of A's VM: %v, want ErrNotFound", err)
	}
	if _, err := b.Open(ctx, "shared", 1, "d"); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("B's Open of A's VM: %v, want ErrNotFound", err)
	}
	if err := b.Expire(ctx, "shared", ma.Newest().Frozen, 0); !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("B's Expire of A's VM: %v, want ErrNotFound", err)
	}
	// B's commit of A's staged-looking generation has nothing staged.
	g3 := ma.Next(3)
	g3.RandomGen(rng, storetest.RandomOptions{Changes: 5})
	if err := g3.Build(); err != nil {
		t.Fatal(err)
	}
	if err := g3.Stage(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx, "shared", 3, g3.Commit()); err == nil || !target.IsPermanent(err) {
		t.Fatalf("B's Commit of A's staged generation: %v, want a permanent error", err)
	}

	// B replicates its own "shared": same name, other data.
	mb, gb := storetest.NewVM(rng, "shared", "d")
	mb.Source = "source-b"
	if err := gb.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := g3.Apply(ctx, a); err != nil { // A goes on with its staged generation
		t.Fatal(err)
	}
	ma.CheckPoints(t, a)
	mb.CheckPoints(t, b)
	for c, want := range map[string][]string{"A": {"shared"}, "B": {"shared"}} {
		cl := a
		if c == "B" {
			cl = b
		}
		if vms, err := cl.VMs(ctx); err != nil || !slices.Equal(vms, want) {
			t.Fatalf("%s's VMs = %q, %v; want %q", c, vms, err, want)
		}
	}
	// Each identity has its own directory.
	for _, id := range []string{tlstest.IdentityA, tlstest.IdentityB} {
		if _, err := os.Stat(filepath.Join(ts.dir, id, "shared")); err != nil {
			t.Errorf("store of %s: %v", id, err)
		}
	}

	// A reader id is only good for the identity that opened it.
	rawA := rawClient(&tls.Config{RootCAs: ts.pki.CA.Pool(), Certificates: []tls.Certificate{ts.pki.ClientA.TLS}}, true)
	rawB := rawClient(&tls.Config{RootCAs: ts.pki.CA.Pool(), Certificates: []tls.Certificate{ts.pki.ClientB.TLS}}, true)
	defer rawA.CloseIdleConnections()
	defer rawB.CloseIdleConnections()
	resp, err := rawA.Post(ts.url+"/v1/readers?vm=shared&gen=1&disk=e", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var open struct {
		ID   string `json:"id"`
		Size int64  `json:"size"`
	}
	err = json.NewDecoder(resp.Body).Decode(&open)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || open.ID == "" {
		t.Fatalf("A's open: %s, %+v, %v", resp.Status, open, err)
	}
	readURL := ts.url + "/v1/readers/" + open.ID + "?off=0&len=100"
	for _, u := range []string{readURL, ts.url + "/v1/readers/" + open.ID + "/extents"} {
		resp, err = rawB.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusGone {
			t.Fatalf("B's GET %s of A's reader: %s %q, want 410", u, resp.Status, body)
		}
	}
	req, _ := http.NewRequest(http.MethodDelete, ts.url+"/v1/readers/"+open.ID, nil)
	if resp, err = rawB.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = rawA.Get(readURL) // B's close did not close A's reader
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || len(body) != 100 || !slices.Equal(body, ma.Points[0].Disks["e"][:100]) {
		t.Fatalf("A's read after B's close: %s, %d bytes", resp.Status, len(body))
	}
}
