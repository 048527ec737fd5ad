package azblob

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Expire drops the oldest points of vm whose time (Frozen, or Applied if
// Frozen is unset) is before before, keeping at least keep points and
// always the newest. Points are dropped oldest first: it stops at the first
// point that is not old enough, or that an open DiskReader of this process
// holds. The manifest is rewritten first; then the snapshots only dropped
// points used are deleted, with the blobs of disks no remaining point holds
// and what crashes left behind (snapshots no point names, staging of
// committed generations), whether or not a point was dropped. A failed
// deletion leaves garbage for the next Expire, never a point without its
// snapshots.
func (s *Store) Expire(ctx context.Context, vm string, before time.Time, keep int) error {
	if err := checkVM(vm); err != nil {
		return err
	}
	l := s.vmLock(vm)
	l.Lock()
	defer l.Unlock()
	m, etag, err := s.readManifest(ctx, vm)
	if err != nil {
		return err
	}
	if m.Applying != nil {
		if m, etag, err = s.finish(ctx, vm, m, etag, true); err != nil {
			return err
		}
	}
	if len(m.Points) == 0 {
		return notFoundVM(vm)
	}
	maxDrop := len(m.Points) - max(keep, 1)
	drop := 0
	for drop < maxDrop && pointTime(&m.Points[drop]).Before(before) && !s.pinned(vm, m.Points[drop].Generation) {
		drop++
	}
	if drop == 0 {
		s.sweep(ctx, vm, m, nil)
		return nil
	}
	next := &manifest{Format: formatVersion, VM: vm, Owner: m.Owner, Points: slices.Clone(m.Points[drop:])}
	if _, err := s.writeManifest(ctx, vm, next, etag); err != nil {
		return err
	}
	s.step("expire manifest")
	s.sweep(ctx, vm, next, m.Points[:drop])
	return nil
}

func pointTime(p *point) time.Time {
	if p.Frozen.IsZero() {
		return p.Applied
	}
	return p.Frozen
}

// sweep deletes what no point of m needs: the snapshots of dropped points,
// then, from a listing of the VM's blobs, snapshots no point names that are
// older than the listing (a commit cut after its snapshots), disk blobs no
// point holds and staging of generations up to the newest point. It is
// best effort: what it fails to delete stays for the next sweep.
func (s *Store) sweep(ctx context.Context, vm string, m *manifest, dropped []point) {
	type snap struct{ disk, id string }
	used := map[snap]bool{}
	held := map[string]bool{}
	for _, p := range m.Points {
		for _, d := range p.Disks {
			used[snap{d.Name, d.Snapshot}] = true
			held[d.Name] = true
		}
	}
	if a := m.Applying; a != nil {
		for _, d := range a.Point.Disks {
			used[snap{d.Name, d.Snapshot}] = true
			held[d.Name] = true
		}
	}
	for _, p := range dropped {
		for _, d := range p.Disks {
			if !used[snap{d.Name, d.Snapshot}] {
				s.deleteSnapshot(ctx, vm, d.Name, d.Snapshot)
				used[snap{d.Name, d.Snapshot}] = true // done
			}
		}
	}

	// Anything created after this instant may belong to a commit this
	// sweep cannot see; it is left alone.
	cutoff := time.Now().UTC().Add(-s.sweepAge)
	dir := s.disksDir(vm)
	pager := s.cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: ptr(dir), Include: container.ListBlobsInclude{Snapshots: true, Metadata: true},
	})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return
		}
		for _, it := range page.Segment.BlobItems {
			disk, ok := unescape(strings.TrimPrefix(*it.Name, dir))
			if !ok || checkDisk(disk) != nil {
				continue
			}
			if kind, _ := meta(it.Metadata, metaKind); kind != kindReplica {
				continue // not ours
			}
			if it.Snapshot != nil && *it.Snapshot != "" {
				t, err := time.Parse(time.RFC3339Nano, *it.Snapshot)
				if !used[snap{disk, *it.Snapshot}] && err == nil && t.Before(cutoff) {
					s.deleteSnapshot(ctx, vm, disk, *it.Snapshot)
				}
				continue
			}
			if !held[disk] && it.Properties != nil && it.Properties.LastModified != nil && it.Properties.LastModified.Before(cutoff) {
				s.cc.NewBlobClient(*it.Name).Delete(ctx, &blob.DeleteOptions{DeleteSnapshots: ptr(blob.DeleteSnapshotsOptionTypeInclude)})
			}
		}
	}

	var newest uint64
	if n := m.newest(); n != nil {
		newest = n.Generation
	}
	root := s.stagingRoot(vm)
	spager := s.cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: ptr(root)})
	for spager.More() {
		page, err := spager.NextPage(ctx)
		if err != nil {
			return
		}
		for _, it := range page.Segment.BlobItems {
			g, _, _ := strings.Cut(strings.TrimPrefix(*it.Name, root), "/")
			if gen, err := strconv.ParseUint(g, 10, 64); err == nil && gen <= newest {
				s.cc.NewBlobClient(*it.Name).Delete(ctx, nil)
			}
		}
	}
}

func (s *Store) deleteSnapshot(ctx context.Context, vm, disk, id string) {
	if c, err := s.cc.NewBlobClient(s.diskBlob(vm, disk)).WithSnapshot(id); err == nil {
		c.Delete(ctx, nil)
	}
}
