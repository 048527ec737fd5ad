package azblob

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/drfs-project/drfs/target"
)

// Commit applies the staged disks of generation gen and makes it the newest
// recovery point of vm:
//
//  1. check the staged streams against the commit and the newest point;
//  2. write the manifest with an "applying" marker naming the point to be
//     made and each staged stream (by its ETag);
//  3. apply each staged stream to its disk blob: create it (a new disk) or
//     resize it, then page writes and clears in parallel;
//  4. snapshot each changed disk blob (an unchanged disk keeps the previous
//     point's snapshot);
//  5. write the manifest with the new point and without the marker, then
//     delete the staging blobs.
//
// Until step 2 nothing changed. After it, the marker makes the next Commit
// or Expire of the VM (in this process or another) finish the commit before
// anything else: it applies the same staged streams again, which writes
// the same bytes to the same pages, so the snapshots of step 4 always hold
// the whole generation. A cancelled context or a failure in steps 3 to 5 is
// a retryable error; the retry (of this generation) finishes the commit.
func (s *Store) Commit(ctx context.Context, vm string, gen uint64, c target.Commit) error {
	if err := checkVM(vm); err != nil {
		return err
	}
	if err := checkName("source", c.Source); err != nil {
		return err
	}
	if len(c.Disks) == 0 {
		return fmt.Errorf("azblob: commit %s generation %d: %w: no disks", vm, gen, target.ErrBadName)
	}
	seen := map[string]bool{}
	for _, d := range c.Disks {
		if err := checkDisk(d); err != nil {
			return err
		}
		if seen[d] {
			return badName("disk", d, "is listed twice")
		}
		if err := s.checkBlobName(vm, d); err != nil {
			return err
		}
		seen[d] = true
	}
	wrap := func(err error) error { return fmt.Errorf("azblob: commit %s generation %d: %w", vm, gen, err) }
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	if err := s.ensureContainer(ctx); err != nil {
		return err
	}
	l := s.vmLock(vm)
	l.Lock()
	defer l.Unlock()

	m, etag, err := s.readManifest(ctx, vm)
	if err != nil {
		return err
	}
	if m.Owner != "" && m.Owner != c.Source {
		return fmt.Errorf("azblob: commit %s: %w: the VM is replicated from %q, not %q", vm, target.ErrWrongSource, m.Owner, c.Source)
	}
	if m.Applying != nil {
		if m, etag, err = s.finish(ctx, vm, m, etag, true); err != nil {
			return err
		}
	}
	if m.find(gen) != nil {
		return nil
	}
	if n := m.newest(); n != nil && gen < n.Generation {
		return fmt.Errorf("azblob: commit %s generation %d: %w: the newest point is %d", vm, gen, target.ErrOutOfOrder, n.Generation)
	}
	a, err := s.plan(ctx, vm, gen, c, m)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return wrap(err)
	}
	m.Applying, m.Owner = a, c.Source
	if etag, err = s.writeManifest(ctx, vm, m, etag); err != nil {
		return wrap(err)
	}
	s.step("marker")
	_, _, err = s.finish(ctx, vm, m, etag, false)
	return err
}

// plan checks the staged streams of gen against the commit and the newest
// point, and returns the marker of the commit.
func (s *Store) plan(ctx context.Context, vm string, gen uint64, c target.Commit, m *manifest) (*applying, error) {
	fail := func(kind error, format string, args ...any) error {
		return fmt.Errorf("azblob: commit %s generation %d: %w: %s", vm, gen, kind, fmt.Sprintf(format, args...))
	}
	staged, err := s.listStaged(ctx, vm, gen)
	if err != nil {
		return nil, err
	}
	newest := m.newest()
	listed := map[string]bool{}
	for _, d := range c.Disks {
		listed[d] = true
	}
	a := &applying{}
	byName := map[string]*stagedDisk{}
	for i := range staged {
		d := &staged[i]
		if !listed[d.Name] {
			return nil, fail(target.ErrNotFound, "disk %s is staged but not among the commit's disks %q", d.Name, c.Disks)
		}
		known := newest != nil && newest.disk(d.Name) != nil
		switch {
		case known && d.Base != newest.Generation:
			return nil, fail(target.ErrOutOfOrder, "disk %s: the stream applies on generation %d, the newest point is %d", d.Name, d.Base, newest.Generation)
		case !known && d.Base != 0 && (newest == nil || d.Base != newest.Generation):
			return nil, fail(target.ErrOutOfOrder, "new disk %s: the stream applies on generation %d", d.Name, d.Base)
		}
		d.Reset = !known
		byName[d.Name] = d
	}
	p := point{
		Generation:    gen,
		Frozen:        c.Frozen.UTC().Round(0),
		Kind:          c.Kind,
		AppConsistent: c.AppConsistent,
	}
	for _, name := range slices.Sorted(slices.Values(c.Disks)) {
		if d := byName[name]; d != nil {
			p.Disks = append(p.Disks, pointDisk{Name: name, Size: d.Size})
			p.Bytes += d.Bytes
			a.Staged = append(a.Staged, *d)
			continue
		}
		var prev *pointDisk
		if newest != nil {
			prev = newest.disk(name)
		}
		if prev == nil {
			return nil, fail(target.ErrNotFound, "disk %s is new at this point but has no staged stream", name)
		}
		p.Disks = append(p.Disks, *prev)
	}
	a.Point = p
	return a, nil
}

// listStaged lists the staged streams of gen with what their metadata says
// of them.
func (s *Store) listStaged(ctx context.Context, vm string, gen uint64) ([]stagedDisk, error) {
	dir := s.stagingDir(vm, gen)
	var out []stagedDisk
	pager := s.cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: ptr(dir), Include: container.ListBlobsInclude{Metadata: true},
	})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, s.fail("list staged streams", dir, err)
		}
		for _, it := range page.Segment.BlobItems {
			disk, ok := unescape(strings.TrimPrefix(*it.Name, dir))
			if !ok || checkDisk(disk) != nil {
				return nil, broken("VM %s: blob %s is not a staged stream of drfs", vm, *it.Name)
			}
			md := it.Metadata
			kind, _ := meta(md, metaKind)
			base, ok1 := meta(md, metaBase)
			size, ok2 := metaInt(md, metaDiskSize)
			n, ok3 := metaInt(md, metaDataBytes)
			b, err := strconv.ParseUint(base, 10, 64)
			if kind != kindStaged || !ok1 || !ok2 || !ok3 || err != nil || size > maxPageBlob || it.Properties == nil || it.Properties.ETag == nil {
				return nil, broken("VM %s: blob %s is not a staged stream of drfs (metadata %v)", vm, *it.Name, slices.Sorted(maps.Keys(md)))
			}
			out = append(out, stagedDisk{Name: disk, ETag: string(*it.Properties.ETag), Size: size, Base: b, Bytes: n})
		}
	}
	slices.SortFunc(out, func(a, b stagedDisk) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// finish carries out the commit the manifest's marker records (steps 3 to
// 5) and returns the new manifest and its ETag. recovered says the commit
// was cut earlier: then the snapshots that attempt may have left are swept.
func (s *Store) finish(ctx context.Context, vm string, m *manifest, etag azcore.ETag, recovered bool) (*manifest, azcore.ETag, error) {
	a := m.Applying
	gen := a.Point.Generation
	wrap := func(err error) error {
		what := "commit"
		if recovered {
			what = "finishing the interrupted commit of"
		}
		return fmt.Errorf("azblob: %s %s generation %d: %w", what, vm, gen, err)
	}
	newest := m.newest()
	p := a.Point
	p.Disks = slices.Clone(p.Disks)
	var seq atomic.Int64 // page writes of the commit, for the test hook
	for _, d := range a.Staged {
		var prev *pointDisk
		if newest != nil && !d.Reset {
			prev = newest.disk(d.Name)
		}
		if err := s.applyDisk(ctx, vm, gen, d, prev, &seq); err != nil {
			return nil, "", wrap(err)
		}
		s.step("apply " + d.Name)
	}
	for _, d := range a.Staged {
		name := s.diskBlob(vm, d.Name)
		resp, err := s.cc.NewPageBlobClient(name).CreateSnapshot(ctx, nil)
		if err != nil {
			return nil, "", wrap(s.fail("snapshot", name, err))
		}
		p.disk(d.Name).Snapshot = *resp.Snapshot
		s.step("snapshot " + d.Name)
	}
	p.Applied = s.clock.Now().UTC().Round(0)
	next := &manifest{Format: formatVersion, VM: vm, Owner: m.Owner, Points: append(slices.Clip(m.Points), p)}
	etag, err := s.writeManifest(ctx, vm, next, etag)
	if err != nil {
		return nil, "", wrap(err)
	}
	s.step("manifest")
	for _, d := range a.Staged {
		s.cc.NewBlobClient(s.stagedBlob(vm, gen, d.Name)).Delete(ctx, nil) // garbage if it fails: Expire sweeps it
	}
	if recovered {
		s.sweep(ctx, vm, next, nil)
	}
	return next, etag, nil
}
