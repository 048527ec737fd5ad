package dirstore

import (
	"context"
	"fmt"

	"github.com/drfs-project/drfs/internal/chunksum"
	"github.com/drfs-project/drfs/target"
)

var _ target.Checksummer = (*Store)(nil)

// Checksums computes the sums of chunks of disk of vm at point gen where the
// replica lives. The newest point reads the replica file itself, only its
// allocated extents (SEEK_DATA): holes cost nothing. An older point reads
// through its DiskReader, the undo data over the replica.
//
// The newest point is read under the VM's lock, shared: a Commit of the VM
// waits for the call to end rather than change the replica under it.
func (s *Store) Checksums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) ([]target.Sum, error) {
	if err := checkVM(vm); err != nil {
		return nil, err
	}
	if err := checkDisk(disk); err != nil {
		return nil, err
	}
	if err := chunksum.CheckRequest(chunk, ranges); err != nil {
		return nil, fmt.Errorf("dirstore: %w", err)
	}
	sums, done, err := s.newestSums(ctx, vm, gen, disk, chunk, ranges)
	if done || err != nil {
		return sums, err
	}
	r, err := s.Open(ctx, vm, gen, disk)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	sums, n, err := chunksum.OfReader(ctx, r, chunk, ranges)
	s.sumRead.Add(n)
	if err != nil {
		return nil, fmt.Errorf("dirstore: checksums of %s/%s point %d: %w", vm, disk, gen, err)
	}
	return sums, nil
}

// newestSums computes the sums if gen is the newest point of vm, from the
// replica file; done is false if it is an older one.
func (s *Store) newestSums(ctx context.Context, vm string, gen uint64, disk string, chunk int64, ranges []target.Extent) (sums []target.Sum, done bool, err error) {
	v, err := s.rlock(vm)
	if err != nil {
		return nil, true, err
	}
	defer s.runlock(v)
	if len(v.points) == 0 {
		return nil, true, notFoundVM(vm)
	}
	p := v.find(gen)
	if p == nil {
		return nil, true, fmt.Errorf("dirstore: VM %s point %d: %w", vm, gen, target.ErrNotFound)
	}
	size, ok := diskSizes(p)[disk]
	if !ok {
		return nil, true, fmt.Errorf("dirstore: VM %s point %d disk %s: %w", vm, gen, disk, target.ErrNotFound)
	}
	if p != v.newest() {
		return nil, false, nil
	}
	f, err := s.root.Open(replicaPath(vm, disk))
	if err != nil {
		return nil, true, fmt.Errorf("dirstore: VM %s disk %s: replica: %w", vm, disk, err)
	}
	defer f.Close()
	exts := []target.Extent{}
	if len(ranges) > 0 {
		last := ranges[len(ranges)-1]
		found, err := dataExtents(f, ranges[0].Off, min(last.Off+last.Len, size))
		if err != nil {
			return nil, true, fmt.Errorf("dirstore: VM %s disk %s: replica: %w", vm, disk, err)
		}
		for _, e := range found {
			exts = append(exts, target.Extent{Off: e.off, Len: e.len})
		}
	}
	sums, n, err := chunksum.Sums(ctx, f, size, exts, chunk, ranges)
	s.sumRead.Add(n)
	if err != nil {
		return nil, true, fmt.Errorf("dirstore: checksums of %s/%s point %d: %w", vm, disk, gen, err)
	}
	return sums, true, nil
}
