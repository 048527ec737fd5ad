// Package azblob is a target.Store in an Azure Blob Storage container, as
// Azure Site Recovery keeps replicas: each replica disk is a page blob that
// always holds the newest applied generation, and each recovery point is a
// blob snapshot of the VM's disk blobs, named in a per-VM manifest blob.
//
// Stage decodes and verifies a frame stream as it arrives and keeps it, still
// compressed, in a staging block blob (blocks uploaded as the stream comes,
// the block list committed only once the trailer checked out). Commit
// records the commit in the manifest (an "applying" marker), applies the
// staged records to the page blobs (dirty blocks coalesced into page writes
// of up to 4 MiB across gaps of up to 128 KiB, the gaps filled with the
// blob's own contents; sent in parallel with a Content-MD5 the service
// checks; zero extents as Clear Pages, or nothing over holes), snapshots
// each changed disk blob, and writes
// the manifest with the new point and without the marker. The manifest is
// the commit point: a point exists once the manifest names it. A commit cut
// half-way is finished by the next Commit or Expire of the VM from the
// same staged streams, in any process: applying a stream twice writes the
// same bytes to the same pages, so a snapshot is always a complete point.
// docs/azblob.md specifies the layout and the protocol.
//
// A store is opened from a URL (azblob://ACCOUNT/CONTAINER[/PREFIX]) with
// New; credentials come from the Azure environment variables or Options and
// never appear in an error.
//
// Concurrency: calls on different VMs run in parallel; Commit and Expire of
// one VM take turns in a process, and the manifest's ETag turns away a
// second process writing the same VM (a retryable error). A DiskReader reads
// its point's snapshots, which later commits leave alone; Expire keeps a
// point while a DiskReader of this process has it open.
package azblob

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/drfs-project/drfs/internal/clock"
	"github.com/drfs-project/drfs/target"
)

// Environment variables of the credentials, as the Azure tools name them.
const (
	EnvConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
	EnvAccountKey       = "AZURE_STORAGE_KEY"
	EnvSASToken         = "AZURE_STORAGE_SAS_TOKEN"
)

// Limits of the service.
const (
	maxPageWrite = 4 << 20  // largest Put Page
	maxPageBlob  = 8 << 40  // largest page blob
	pageSize     = 512      // page blob sizes and writes are multiples of it
	maxBlocks    = 50000    // blocks of one block blob
	stageBlock   = 4 << 20  // staging block size for the first stageBlocks1 blocks
	stageBlocks1 = 20000    // then stageBlockBig
	stageBigSize = 32 << 20 // staging block size after stageBlocks1
)

// Options configure a Store. The zero value takes the credentials from the
// environment and the service's defaults.
type Options struct {
	// Credentials, tried in this order; if none is set, the environment
	// variables of the same names (EnvConnectionString, EnvAccountKey,
	// EnvSASToken) are. A connection string brings its own endpoint.
	ConnectionString string
	AccountKey       string // shared key of the URL's account
	SASToken         string // a SAS token for the container (with or without '?')

	// CreateContainer creates the container if it does not exist (URL:
	// create=true). Without it, a missing container is a permanent error
	// that says so.
	CreateContainer bool

	// Parallel is how many page writes of a Commit (and staging blocks of a
	// Stage, up to 4) are in flight at once (URL: parallel=N); 8 if 0.
	Parallel int
	// PageWrite is the largest page write Commit sends, a multiple of 512
	// up to 4 MiB (the service's limit); 4 MiB if 0. Consecutive dirty
	// blocks are coalesced up to it.
	PageWrite int
	// Gap is the largest gap between dirty blocks that one page write
	// bridges, filled with what the newest point holds there (read from
	// its snapshot in one ranged GET per write, nothing to read where it
	// is a hole), a multiple of 512 (URL: gap=N): fewer, larger writes for
	// scattered blocks, at the price of reading and rewriting the gaps.
	// DefaultGap if 0; negative: no gaps bridged, only adjacent blocks
	// coalesced.
	Gap int

	// Retry configures the SDK's retries of throttled (429, 503), failed
	// (500, 502, 504) and timed-out requests; zero fields take the store's
	// defaults (5 retries from 500 ms up to 30 s, 5 min per try). Whatever
	// still fails is returned as a retryable error for the caller's own
	// retry policy.
	Retry policy.RetryOptions

	// Transport sends the HTTP requests; http.DefaultTransport's kind if
	// nil. Tests inject faults here.
	Transport http.RoundTripper

	// Clock is the clock of Point.Applied; the system clock if nil.
	Clock clock.Clock
}

// Store is a target.Store in an Azure Blob container. Create it with New.
type Store struct {
	cc        *container.Client
	account   string
	container string
	prefix    string // "" or a path ending in "/"
	parallel  int
	pageWrite int
	gap       int // largest gap bridged; 0: none
	create    bool
	clock     clock.Clock
	secrets   []string      // redacted from every error message
	sweepAge  time.Duration // sweep leaves younger orphans alone (a minute; tests set less)

	createOnce sync.Mutex // guards created
	created    bool

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per VM: Commit and Expire
	pins  map[pinKey]int         // open DiskReaders per point

	// Test hooks, nil in production: pageHook is called before each page
	// write or clear of a Commit with its sequence number (from 1); stepHook
	// after each step of the commit protocol.
	pageHook func(n int64) error
	stepHook func(step string)

	pageWrites atomic.Int64 // Put Page and Clear Pages calls, for tests and benchmarks
	stats      applyStats
}

type pinKey struct {
	vm  string
	gen uint64
}

var (
	_ target.Store       = (*Store)(nil)
	_ target.Checksummer = (*Store)(nil)
)

var (
	accountRE   = regexp.MustCompile(`^[a-z0-9]{3,24}$`)
	containerRE = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9]|-[a-z0-9])*$`) // and 3 to 63 long
)

// New opens the store at rawURL:
//
//	azblob://ACCOUNT/CONTAINER[/PREFIX][?endpoint=URL&create=true&parallel=N]
//
// endpoint is the account's blob endpoint (default
// https://ACCOUNT.blob.core.windows.net; for Azurite
// http://127.0.0.1:10000/devstoreaccount1, for a sovereign cloud its
// domain). New does not reach the service: a wrong credential or a missing
// container shows in the first call.
func New(rawURL string, opts Options) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("azblob: target URL: %w", err)
	}
	if u.Scheme != "azblob" {
		return nil, fmt.Errorf("azblob: target URL scheme %q, want azblob://ACCOUNT/CONTAINER[/PREFIX]", u.Scheme)
	}
	if u.User != nil || u.Fragment != "" || u.Port() != "" {
		return nil, errors.New("azblob: a target URL is azblob://ACCOUNT/CONTAINER[/PREFIX]; credentials go in the environment, not the URL")
	}
	account := u.Host
	if !accountRE.MatchString(account) {
		return nil, fmt.Errorf("azblob: account name %q: 3 to 24 lowercase letters and digits", account)
	}
	path := strings.Trim(u.Path, "/")
	cont, prefix, _ := strings.Cut(path, "/")
	if !containerRE.MatchString(cont) || len(cont) < 3 || len(cont) > 63 {
		return nil, fmt.Errorf("azblob: container name %q: 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit", cont)
	}
	if prefix != "" {
		for elem := range strings.SplitSeq(prefix, "/") {
			if elem == "" || elem == "." || elem == ".." {
				return nil, fmt.Errorf("azblob: prefix %q: empty, '.' or '..' path element", prefix)
			}
		}
		prefix = escapePath(prefix) + "/"
	}
	endpoint := "https://" + account + ".blob.core.windows.net"
	for k, vs := range u.Query() {
		v := vs[len(vs)-1]
		switch k {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "https" && e.Scheme != "http") || e.Host == "" || e.RawQuery != "" {
				return nil, fmt.Errorf("azblob: endpoint %q: want an http(s) URL without a query", v)
			}
			endpoint = strings.TrimSuffix(v, "/")
		case "create":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("azblob: create=%q: want true or false", v)
			}
			opts.CreateContainer = b
		case "parallel":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 64 {
				return nil, fmt.Errorf("azblob: parallel=%q: want 1 to 64", v)
			}
			opts.Parallel = n
		case "gap":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n%pageSize != 0 || n > maxPageWrite {
				return nil, fmt.Errorf("azblob: gap=%q: want a multiple of %d up to %d bytes (0: no gaps bridged)", v, pageSize, maxPageWrite)
			}
			opts.Gap = n
			if n == 0 {
				opts.Gap = -1
			}
		default:
			return nil, fmt.Errorf("azblob: unknown URL parameter %q (known: endpoint, create, parallel, gap)", k)
		}
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 8
	}
	if opts.PageWrite == 0 {
		opts.PageWrite = maxPageWrite
	}
	if opts.PageWrite < pageSize || opts.PageWrite > maxPageWrite || opts.PageWrite%pageSize != 0 {
		return nil, fmt.Errorf("azblob: page write size %d: want a multiple of %d up to %d", opts.PageWrite, pageSize, maxPageWrite)
	}
	switch {
	case opts.Gap == 0:
		opts.Gap = DefaultGap
	case opts.Gap < 0:
		opts.Gap = 0
	case opts.Gap%pageSize != 0 || opts.Gap > maxPageWrite:
		return nil, fmt.Errorf("azblob: gap %d: want a multiple of %d up to %d", opts.Gap, pageSize, maxPageWrite)
	}
	if opts.Clock == nil {
		opts.Clock = clock.System{}
	}
	s := &Store{
		account: account, container: cont, prefix: prefix,
		parallel: opts.Parallel, pageWrite: opts.PageWrite, gap: opts.Gap, create: opts.CreateContainer, clock: opts.Clock,
		locks: map[string]*sync.Mutex{}, pins: map[pinKey]int{}, sweepAge: time.Minute,
	}
	if err := s.connect(endpoint, opts); err != nil {
		return nil, err
	}
	return s, nil
}

// connect builds the container client from the first credential found.
func (s *Store) connect(endpoint string, opts Options) error {
	retry := opts.Retry
	if retry.MaxRetries == 0 {
		retry.MaxRetries = 5
	}
	if retry.RetryDelay == 0 {
		retry.RetryDelay = 500 * time.Millisecond
	}
	if retry.MaxRetryDelay == 0 {
		retry.MaxRetryDelay = 30 * time.Second
	}
	if retry.TryTimeout == 0 {
		retry.TryTimeout = 5 * time.Minute
	}
	co := &container.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: retry}}
	if opts.Transport != nil {
		co.Transport = &http.Client{Transport: opts.Transport}
	}
	cs, key, sas := opts.ConnectionString, opts.AccountKey, opts.SASToken
	if cs == "" && key == "" && sas == "" {
		cs, key, sas = os.Getenv(EnvConnectionString), os.Getenv(EnvAccountKey), os.Getenv(EnvSASToken)
	}
	containerURL := endpoint + "/" + s.container
	var err error
	switch {
	case cs != "":
		s.secrets = append(s.secrets, connStringSecrets(cs)...)
		if name := connStringField(cs, "AccountName"); name != "" && name != s.account {
			return fmt.Errorf("azblob: the connection string is for account %q, the target URL names %q", name, s.account)
		}
		s.cc, err = container.NewClientFromConnectionString(cs, s.container, co)
		if err != nil {
			return errors.New("azblob: the connection string is not valid: want AccountName=...;AccountKey=... or a SharedAccessSignature, with a BlobEndpoint or DefaultEndpointsProtocol and EndpointSuffix")
		}
	case key != "":
		s.secrets = append(s.secrets, key)
		cred, kerr := container.NewSharedKeyCredential(s.account, key)
		if kerr != nil {
			return errors.New("azblob: the account key is not valid base64")
		}
		s.cc, err = container.NewClientWithSharedKeyCredential(containerURL, cred, co)
	case sas != "":
		sas = strings.TrimPrefix(sas, "?")
		s.secrets = append(s.secrets, sas)
		if q, perr := url.ParseQuery(sas); perr == nil && q.Get("sig") != "" {
			s.secrets = append(s.secrets, q.Get("sig"), url.QueryEscape(q.Get("sig")))
		}
		s.cc, err = container.NewClientWithNoCredential(containerURL+"?"+sas, co)
	default:
		return fmt.Errorf("azblob: no credentials for account %s: set %s, %s (with the account in the URL) or %s",
			s.account, EnvConnectionString, EnvAccountKey, EnvSASToken)
	}
	if err != nil {
		return errors.New(s.redact("azblob: " + err.Error()))
	}
	return nil
}

// connStringField returns the value of key in a connection string.
func connStringField(cs, key string) string {
	for part := range strings.SplitSeq(cs, ";") {
		k, v, ok := strings.Cut(part, "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), key) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func connStringSecrets(cs string) []string {
	out := []string{cs}
	if k := connStringField(cs, "AccountKey"); k != "" {
		out = append(out, k)
	}
	if sas := connStringField(cs, "SharedAccessSignature"); sas != "" {
		out = append(out, sas)
		if q, err := url.ParseQuery(sas); err == nil && q.Get("sig") != "" {
			out = append(out, q.Get("sig"), url.QueryEscape(q.Get("sig")))
		}
	}
	return out
}

// Close releases nothing: the store holds no local resources. Open
// DiskReaders keep working.
func (s *Store) Close() error { return nil }

// ensureContainer creates the container, once, if the store was opened
// with CreateContainer.
func (s *Store) ensureContainer(ctx context.Context) error {
	if !s.create {
		return nil
	}
	s.createOnce.Lock()
	defer s.createOnce.Unlock()
	if s.created {
		return nil
	}
	_, err := s.cc.Create(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return s.fail("create container", s.container, err)
	}
	s.created = true
	return nil
}

func (s *Store) step(name string) {
	if s.stepHook != nil {
		s.stepHook(name)
	}
}

// vmLock returns the lock Commit and Expire of vm hold.
func (s *Store) vmLock(vm string) *sync.Mutex {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.locks[vm]
	if l == nil {
		l = &sync.Mutex{}
		s.locks[vm] = l
	}
	return l
}

// Layout; docs/azblob.md.
func (s *Store) vmDir(vm string) string        { return s.prefix + escape(vm) + "/" }
func (s *Store) manifestBlob(vm string) string { return s.vmDir(vm) + "manifest.json" }
func (s *Store) disksDir(vm string) string     { return s.vmDir(vm) + "disks/" }
func (s *Store) diskBlob(vm, disk string) string {
	return s.disksDir(vm) + escapePath(disk)
}
func (s *Store) stagingRoot(vm string) string { return s.vmDir(vm) + "staging/" }
func (s *Store) stagingDir(vm string, gen uint64) string {
	return s.stagingRoot(vm) + strconv.FormatUint(gen, 10) + "/"
}
func (s *Store) stagedBlob(vm string, gen uint64, disk string) string {
	return s.stagingDir(vm, gen) + escapePath(disk)
}

// Metadata keys and values drfs puts on its blobs.
const (
	metaKind      = "drfs"     // what the blob is: one of the kinds below
	kindReplica   = "replica1" // a disk's page blob
	kindStaged    = "staged1"  // a staged stream
	kindManifest  = "manifest1"
	metaSize      = "drfssize"    // a replica's true size in bytes
	metaCreated   = "drfscreated" // the generation that created a replica blob
	metaBase      = "drfsbase"    // a staged stream's header fields
	metaDiskSize  = "drfsdisksize"
	metaBlockSize = "drfsblocksize"
	metaDataBytes = "drfsdatabytes"
)

// meta reads a metadata value; the service may hand keys back in any case.
func meta(m map[string]*string, key string) (string, bool) {
	for k, v := range m {
		if strings.EqualFold(k, key) && v != nil {
			return *v, true
		}
	}
	return "", false
}

func metaInt(m map[string]*string, key string) (int64, bool) {
	v, ok := meta(m, key)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n >= 0
}

func ptr[T any](v T) *T { return &v }

// manifest is the content of a VM's manifest blob: its points, and the
// commit in progress. docs/azblob.md.
type manifest struct {
	Format   int       `json:"format"`
	VM       string    `json:"vm"`
	Owner    string    `json:"owner"` // the source host the VM is replicated from
	Points   []point   `json:"points"`
	Applying *applying `json:"applying,omitempty"`
}

const formatVersion = 1

// point is a recovery point with the snapshot of each disk.
type point struct {
	Generation    uint64           `json:"generation"`
	Frozen        time.Time        `json:"frozen"`
	Applied       time.Time        `json:"applied"`
	Kind          target.PointKind `json:"kind"`
	AppConsistent bool             `json:"app_consistent"`
	Bytes         int64            `json:"bytes"`
	Disks         []pointDisk      `json:"disks"` // sorted by name
}

type pointDisk struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Snapshot string `json:"snapshot"` // the disk blob's snapshot holding the disk at the point
}

// applying is the marker of a commit in progress: the point it makes (whose
// disks not staged keep the previous point's snapshots, and whose staged
// disks get snapshots when the commit finishes) and the staged streams.
type applying struct {
	Point  point        `json:"point"`
	Staged []stagedDisk `json:"staged"`
}

// stagedDisk is one staged stream of a commit.
type stagedDisk struct {
	Name  string `json:"name"`
	ETag  string `json:"etag"`  // of the staging blob: the stream the commit applies
	Reset bool   `json:"reset"` // new to the VM: the disk blob starts empty
	Size  int64  `json:"size"`  // after the generation
	Base  uint64 `json:"base"`
	Bytes int64  `json:"bytes"` // uncompressed data bytes of the stream
}

func (m *manifest) newest() *point {
	if len(m.Points) == 0 {
		return nil
	}
	return &m.Points[len(m.Points)-1]
}

func (m *manifest) find(gen uint64) *point {
	for i := range m.Points {
		if m.Points[i].Generation == gen {
			return &m.Points[i]
		}
	}
	return nil
}

func (p *point) disk(name string) *pointDisk {
	for i := range p.Disks {
		if p.Disks[i].Name == name {
			return &p.Disks[i]
		}
	}
	return nil
}

func (p *point) public(vm string) target.Point {
	out := target.Point{
		VM: vm, Generation: p.Generation, Frozen: p.Frozen, Applied: p.Applied, Kind: p.Kind,
		Bytes: p.Bytes, AppConsistent: p.AppConsistent, Disks: make([]target.DiskInfo, len(p.Disks)),
	}
	for i, d := range p.Disks {
		out.Disks[i] = target.DiskInfo{Name: d.Name, Size: d.Size}
	}
	return out
}

// readManifest returns the manifest of vm and its ETag; a VM without one
// gives an empty manifest and etag "".
func (s *Store) readManifest(ctx context.Context, vm string) (*manifest, azcore.ETag, error) {
	name := s.manifestBlob(vm)
	resp, err := s.cc.NewBlobClient(name).DownloadStream(ctx, nil)
	if isNotFound(err) && !bloberror.HasCode(err, bloberror.ContainerNotFound) {
		return &manifest{Format: formatVersion, VM: vm}, "", nil
	}
	if err != nil {
		return nil, "", s.fail("read manifest", name, err)
	}
	body := resp.NewRetryReader(ctx, nil)
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, 64<<20))
	if err != nil {
		return nil, "", s.fail("read manifest", name, err)
	}
	m := &manifest{}
	if err := json.Unmarshal(b, m); err != nil || m.Format != formatVersion || m.VM != vm {
		why := "it is not JSON"
		if err == nil {
			why = fmt.Sprintf("format %d and VM %q, want format %d and VM %q", m.Format, m.VM, formatVersion, vm)
		}
		return nil, "", broken("VM %s: blob %s is not a drfs manifest (%s): this container (or prefix) holds something else, or the manifest was damaged", vm, name, why)
	}
	if err := m.check(); err != nil {
		return nil, "", broken("VM %s: manifest %s: %v", vm, name, err)
	}
	return m, *resp.ETag, nil
}

// check validates what a manifest says before the store acts on it.
func (m *manifest) check() error {
	var last uint64
	for i, p := range m.Points {
		if i > 0 && p.Generation <= last {
			return fmt.Errorf("points out of order at generation %d", p.Generation)
		}
		last = p.Generation
		for _, d := range p.Disks {
			if checkDisk(d.Name) != nil || d.Size < 0 || d.Size > maxPageBlob || d.Snapshot == "" {
				return fmt.Errorf("point %d: disk %q: bad name, size or snapshot", p.Generation, d.Name)
			}
		}
	}
	if a := m.Applying; a != nil {
		for _, d := range a.Staged {
			if checkDisk(d.Name) != nil || d.Size < 0 || d.Size > maxPageBlob || d.ETag == "" {
				return fmt.Errorf("applying: disk %q: bad name, size or ETag", d.Name)
			}
		}
	}
	return nil
}

// writeManifest replaces the manifest of vm if it still has etag (creates it
// if etag is ""), and returns the new ETag. A manifest that changed in
// between is a retryable conflict; one that the service wrote but whose
// answer was lost (so that the SDK's retry met the new ETag) is success.
func (s *Store) writeManifest(ctx context.Context, vm string, m *manifest, etag azcore.ETag) (azcore.ETag, error) {
	b, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return "", err
	}
	b = append(b, '\n')
	name := s.manifestBlob(vm)
	cond := &blob.ModifiedAccessConditions{}
	if etag == "" {
		cond.IfNoneMatch = ptr(azcore.ETagAny)
	} else {
		cond.IfMatch = ptr(etag)
	}
	sum := md5.Sum(b)
	resp, err := s.cc.NewBlockBlobClient(name).Upload(ctx, streaming.NopCloser(bytes.NewReader(b)), &blockblob.UploadOptions{
		Metadata:                map[string]*string{metaKind: ptr(kindManifest)},
		HTTPHeaders:             &blob.HTTPHeaders{BlobContentType: ptr("application/json")},
		TransactionalValidation: blob.TransferValidationTypeMD5(sum[:]),
		AccessConditions:        &blob.AccessConditions{ModifiedAccessConditions: cond},
	})
	if err == nil {
		return *resp.ETag, nil
	}
	if st, _ := statusOf(err); st != http.StatusPreconditionFailed && st != http.StatusConflict {
		return "", s.fail("write manifest", name, err)
	}
	// Did an earlier try of this very write land?
	got, gerr := s.cc.NewBlobClient(name).DownloadStream(ctx, nil)
	if gerr == nil {
		body := got.NewRetryReader(ctx, nil)
		cur, rerr := io.ReadAll(io.LimitReader(body, 64<<20))
		body.Close()
		if rerr == nil && bytes.Equal(cur, b) {
			return *got.ETag, nil
		}
	}
	return "", &conflictError{fmt.Sprintf("azblob: VM %s: the manifest changed under this call (another process writing the same VM?): retry", vm)}
}

// VMs lists the VMs with at least one recovery point (and those whose
// manifest cannot be read: their Points says why), sorted.
func (s *Store) VMs(ctx context.Context) ([]string, error) {
	// A store told to create its container creates it on first use, so
	// that a new target lists as empty rather than missing.
	if err := s.ensureContainer(ctx); err != nil {
		return nil, err
	}
	out := []string{}
	pager := s.cc.NewListBlobsHierarchyPager("/", &container.ListBlobsHierarchyOptions{Prefix: ptr(s.prefix)})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, s.fail("list VMs", s.prefix, err)
		}
		for _, p := range page.Segment.BlobPrefixes {
			vm, ok := unescape(strings.TrimSuffix(strings.TrimPrefix(*p.Name, s.prefix), "/"))
			if !ok || checkVM(vm) != nil {
				continue
			}
			m, _, err := s.readManifest(ctx, vm)
			if err != nil && target.IsPermanent(err) {
				out = append(out, vm) // listed, so that its Points reports the error
				continue
			}
			if err != nil {
				return nil, err
			}
			if len(m.Points) > 0 {
				out = append(out, vm)
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// Points lists the recovery points of vm, oldest first.
func (s *Store) Points(ctx context.Context, vm string) ([]target.Point, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	m, _, err := s.readManifest(ctx, vm)
	if err != nil {
		return nil, err
	}
	if len(m.Points) == 0 {
		return nil, notFoundVM(vm)
	}
	out := make([]target.Point, len(m.Points))
	for i := range m.Points {
		out[i] = m.Points[i].public(vm)
	}
	return out, nil
}

func notFoundVM(vm string) error {
	return fmt.Errorf("azblob: VM %s: %w", vm, target.ErrNotFound)
}

func roundUp(n int64) int64 { return (n + pageSize - 1) &^ (pageSize - 1) }
