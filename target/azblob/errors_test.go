package azblob

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"

	"github.com/drfs-project/drfs/target"
	"github.com/drfs-project/drfs/target/storetest"
)

// flaky answers a fraction of requests with 503 Server Busy, as a
// throttling service does: before sending them (before), or after the
// service carried them out, so that the answer is lost (after).
type flaky struct {
	mu            sync.Mutex
	rng           *rand.Rand
	before, after float64
	busy          atomic.Int64
}

func (f *flaky) roll() float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rng.Float64()
}

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	if f.roll() < f.before {
		if r.Body != nil {
			r.Body.Close()
		}
		return f.serverBusy(r), nil
	}
	resp, err := http.DefaultTransport.RoundTrip(r)
	if err == nil && f.roll() < f.after {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return f.serverBusy(r), nil
	}
	return resp, err
}

func (f *flaky) serverBusy(r *http.Request) *http.Response {
	f.busy.Add(1)
	h := http.Header{}
	h.Set("x-ms-error-code", "ServerBusy")
	h.Set("Retry-After", "0")
	return &http.Response{
		StatusCode: http.StatusServiceUnavailable, Status: "503 Server Busy", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(strings.NewReader("")), Request: r,
	}
}

// replicate applies n random generations of a model VM to st and checks
// every point, expiring some on the way.
func replicate(t *testing.T, st target.Store, seed uint64, n int) *storetest.VM {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	m, g := storetest.NewVM(rng, "vm", "d", "e/f")
	must(t, g.Apply(bg, st))
	for i := 1; i < n; i++ {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 16, MaxGrow: 9000, MinSize: 512})
		must(t, g.Apply(bg, st))
	}
	must(t, st.Expire(bg, m.Name, m.Points[1].Frozen, 1))
	m.Points = m.Points[1:]
	m.CheckPoints(t, st)
	return m
}

// TestThrottled: with a quarter of the requests answered 503 (some after the
// service carried them out), every operation still succeeds: the SDK
// retries them, and the store's writes are safe to repeat.
func TestThrottled(t *testing.T) {
	azuriteEndpoint(t)
	f := &flaky{rng: rand.New(rand.NewPCG(1, 2)), before: 0.2, after: 0.05}
	opts := Options{Transport: f, PageWrite: 8192}
	opts.Retry.MaxRetries = 12
	st := newTestStore(t, opts)
	st.sweepAge = 0
	replicate(t, st, 3, 6)
	if f.busy.Load() < 20 {
		t.Fatalf("only %d requests were answered 503", f.busy.Load())
	}
	t.Logf("%d requests answered 503 Server Busy", f.busy.Load())
	checkClean(t, st, "vm", true)
}

// TestWrongKey: a key the service does not accept is ErrAuth, permanent,
// and the key appears in no error.
func TestWrongKey(t *testing.T) {
	azuriteEndpoint(t)
	good := newTestStore(t, Options{})
	replicate(t, good, 1, 2)
	const badKey = "bm90IHRoZSBrZXkgb2YgZGV2c3RvcmVhY2NvdW50MSBub3QgdGhlIGtleQ=="
	bad := reopenWith(t, good, Options{AccountKey: badKey})
	checkAuth(t, bad, badKey)
}

// reopenWith opens st's container with other options.
func reopenWith(t *testing.T, st *Store, opts Options) *Store {
	t.Helper()
	u := "azblob://" + st.account + "/" + st.container + "?endpoint=" + url.QueryEscape(azuriteEndpoint(t))
	return openTestStore(t, u, opts, false)
}

// checkAuth checks that every call of st fails with a permanent ErrAuth
// that does not show secret.
func checkAuth(t *testing.T, st *Store, secret string) {
	t.Helper()
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, target.ErrAuth) || !target.IsPermanent(err) {
			t.Fatalf("%s: %v, want a permanent ErrAuth", what, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("%s: the error shows the secret: %v", what, err)
		}
	}
	_, err := st.VMs(bg)
	check("VMs", err)
	_, err = st.Points(bg, "vm")
	check("Points", err)
	_, err = st.Open(bg, "vm", 1, "d")
	check("Open", err)
	check("Expire", st.Expire(bg, "vm", time.Now(), 1))
	rng := rand.New(rand.NewPCG(5, 5))
	_, g := storetest.NewVM(rng, "vm2", "d")
	must(t, g.Build())
	check("Stage", st.Stage(bg, "vm2", 1, "d", bytes.NewReader(g.Streams["d"])))
	check("Commit", st.Commit(bg, "vm2", 1, g.Commit()))
	t.Logf("as the user sees it: %v", st.Expire(bg, "vm", time.Now(), 1))
}

// TestSASToken: a container SAS works; an expired one is ErrAuth, and its
// signature appears in no error, nor does it when the network fails.
//
// Azurite (3.37) refuses a container SAS on requests for a snapshot (it
// signs the request's snapshot parameter into the string to sign) and
// fails an account SAS on Resize, both of which the service takes: so the
// generations here keep their sizes, and the points are read back with the
// account key.
func TestSASToken(t *testing.T) {
	azuriteEndpoint(t)
	owner := newTestStore(t, Options{})
	cred, err := container.NewSharedKeyCredential(azuriteAccount, azuriteKey)
	must(t, err)
	token := func(expiry time.Time) (string, string) {
		q, err := sas.BlobSignatureValues{
			Protocol: sas.ProtocolHTTPSandHTTP, ExpiryTime: expiry, ContainerName: owner.container,
			Permissions: (&sas.ContainerPermissions{Read: true, Add: true, Create: true, Write: true, Delete: true, List: true}).String(),
		}.SignWithSharedKey(cred)
		must(t, err)
		return q.Encode(), q.Signature()
	}
	good, _ := token(time.Now().Add(time.Hour))
	st := reopenWith(t, owner, Options{SASToken: good})
	rng := rand.New(rand.NewPCG(2, 2))
	m, g := storetest.NewVM(rng, "vm", "d", "e/f")
	must(t, g.Apply(bg, st))
	for range 2 {
		g := m.Next(m.Newest().Gen + 1)
		g.RandomGen(rng, storetest.RandomOptions{Changes: 16})
		must(t, g.Apply(bg, st))
	}
	m.CheckPoints(t, owner)
	vms, err := st.VMs(bg)
	must(t, err)
	if len(vms) != 1 {
		t.Fatalf("VMs through the SAS: %q", vms)
	}

	expired, sig := token(time.Now().Add(-time.Hour))
	checkAuth(t, reopenWith(t, owner, Options{SASToken: expired}), sig)

	// Nothing listens on port 1: a network error, retryable, without the token.
	down, err := New("azblob://"+azuriteAccount+"/"+owner.container+"?endpoint=http://127.0.0.1:1/"+azuriteAccount,
		Options{SASToken: good, Retry: noRetry()})
	must(t, err)
	_, err = down.Points(bg, "vm")
	if err == nil || target.IsPermanent(err) {
		t.Fatalf("Points with the service down: %v, want a retryable error", err)
	}
	if q, _ := url.ParseQuery(good); strings.Contains(err.Error(), q.Get("sig")) || strings.Contains(err.Error(), url.QueryEscape(q.Get("sig"))) {
		t.Fatalf("the error shows the SAS signature: %v", err)
	}
	t.Logf("service down: %v", err)
}

// TestConnectionString: a connection string brings the account, key and
// endpoint; one for another account than the URL's is refused.
func TestConnectionString(t *testing.T) {
	ep := azuriteEndpoint(t)
	owner := newTestStore(t, Options{})
	cs := "DefaultEndpointsProtocol=http;AccountName=" + azuriteAccount + ";AccountKey=" + azuriteKey + ";BlobEndpoint=" + ep + ";"
	st, err := New("azblob://"+azuriteAccount+"/"+owner.container, Options{ConnectionString: cs})
	must(t, err)
	replicate(t, st, 4, 2)
	_, err = New("azblob://otheraccount/"+owner.container, Options{ConnectionString: cs})
	if err == nil || strings.Contains(err.Error(), azuriteKey) {
		t.Fatalf("New with a connection string of another account: %v", err)
	}
}

// TestMissingContainer: without create=true a missing container is a
// permanent error that says so; with it, the container is created.
func TestMissingContainer(t *testing.T) {
	u := testURL(t, "")
	st := openTestStore(t, u, Options{}, false)
	_, err := st.VMs(bg)
	if err == nil || !target.IsPermanent(err) || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), st.container) {
		t.Fatalf("VMs of a missing container: %v, want a permanent error naming it", err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	_, g := storetest.NewVM(rng, "vm", "d")
	must(t, g.Build())
	err = st.Stage(bg, "vm", 1, "d", bytes.NewReader(g.Streams["d"]))
	if err == nil || !target.IsPermanent(err) || !strings.Contains(err.Error(), "create=true") {
		t.Fatalf("Stage to a missing container: %v, want a permanent error that says how to create it", err)
	}
	t.Logf("as the user sees it: %v", err)

	created := openTestStore(t, u+"&create=true", Options{}, false)
	t.Cleanup(func() { created.cc.Delete(bg, nil) })
	replicate(t, created, 6, 2)
}

// TestNotAReplica: blobs drfs did not write where it keeps its own give
// permanent errors that say what is wrong, and change nothing.
func TestNotAReplica(t *testing.T) {
	azuriteEndpoint(t)
	st := newTestStore(t, Options{})
	put := func(name, content string) {
		t.Helper()
		_, err := st.cc.NewBlockBlobClient(name).Upload(bg, streaming.NopCloser(strings.NewReader(content)), &blockblob.UploadOptions{})
		must(t, err)
	}
	wantBroken := func(what string, err error, says string) {
		t.Helper()
		if err == nil || !target.IsPermanent(err) || !strings.Contains(err.Error(), says) {
			t.Fatalf("%s: %v, want a permanent error saying %q", what, err, says)
		}
	}

	// A manifest that is not one.
	put(st.manifestBlob("junk"), "<html>hello</html>")
	_, err := st.Points(bg, "junk")
	wantBroken("Points", err, "not a drfs manifest")
	_, err = st.Open(bg, "junk", 1, "d")
	wantBroken("Open", err, "not a drfs manifest")
	wantBroken("Expire", st.Expire(bg, "junk", time.Now(), 1), "not a drfs manifest")
	rng := rand.New(rand.NewPCG(8, 8))
	_, g := storetest.NewVM(rng, "junk", "d")
	must(t, g.Build())
	err = st.Stage(bg, "junk", 1, "d", bytes.NewReader(g.Streams["d"]))
	wantBroken("Stage", err, "not a drfs manifest")
	t.Logf("as the user sees it: %v", err)
	vms, err := st.VMs(bg)
	must(t, err)
	if len(vms) != 1 || vms[0] != "junk" {
		t.Fatalf("VMs = %q, want the junk VM listed so that its Points says what is wrong", vms)
	}

	// A block blob where a new disk's page blob goes.
	m, g := storetest.NewVM(rng, "vm", "d", "e")
	put(st.diskBlob("vm", "e"), "some file")
	must(t, g.Build())
	must(t, g.Stage(bg, st))
	err = st.Commit(bg, "vm", 1, g.Commit())
	wantBroken("Commit over a foreign blob", err, "not a drfs replica")
	t.Logf("as the user sees it: %v", err)
	_, err = st.Points(bg, "vm")
	if !errors.Is(err, target.ErrNotFound) {
		t.Fatalf("Points after the failed commit: %v, want ErrNotFound", err)
	}
	// Once the operator removed it, the next Commit finishes the commit.
	_, err = st.cc.NewBlobClient(st.diskBlob("vm", "e")).Delete(bg, nil)
	must(t, err)
	must(t, st.Commit(bg, "vm", 1, g.Commit()))
	g.Committed()
	m.CheckPoints(t, st)

	// A snapshot the manifest names, deleted by hand.
	mf, _, err := st.readManifest(bg, "vm")
	must(t, err)
	c, err := st.cc.NewBlobClient(st.diskBlob("vm", "d")).WithSnapshot(mf.Points[0].disk("d").Snapshot)
	must(t, err)
	_, err = c.Delete(bg, nil)
	must(t, err)
	_, err = st.Open(bg, "vm", 1, "d")
	wantBroken("Open of a point whose snapshot is gone", err, "is gone")

	// A disk blob deleted by hand (with its snapshots): the next generation
	// cannot apply on it, and is not applied to an empty blob instead.
	_, err = st.cc.NewBlobClient(st.diskBlob("vm", "d")).Delete(bg, &blob.DeleteOptions{DeleteSnapshots: ptr(blob.DeleteSnapshotsOptionTypeInclude)})
	must(t, err)
	g = m.Next(2)
	g.Write("d", 0, bytes.Repeat([]byte{1}, 4096))
	must(t, g.Build())
	must(t, g.Stage(bg, st))
	err = st.Commit(bg, "vm", 2, g.Commit())
	wantBroken("Commit on a disk blob that is gone", err, "is gone")
	t.Logf("as the user sees it: %v", err)
	if pts, err := st.Points(bg, "vm"); err != nil || len(pts) != 1 {
		t.Fatalf("Points after the failed commit: %v, %v; want point 1 alone", pts, err)
	}
}

// noRetry makes the SDK try once.
func noRetry() (r policyRetry) {
	r.MaxRetries = -1
	return r
}

type policyRetry = policy.RetryOptions
