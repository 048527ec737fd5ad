package azblob

import (
	"context"
	"io"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// This file serves benchmarks: the baseline that page writes are compared
// with, and removing what a benchmark left.

// UploadBlockBlob uploads r as one block blob named name under the store's
// prefix, in blocks of 4 MiB with parallel blocks in flight (the store's
// Parallel if 0), without transactional checksums: the least the same
// bytes cost as plain object storage.
func (s *Store) UploadBlockBlob(ctx context.Context, name string, r io.Reader, parallel int) error {
	if err := s.ensureContainer(ctx); err != nil {
		return err
	}
	if parallel <= 0 {
		parallel = s.parallel
	}
	full := s.prefix + escapePath(name)
	_, err := s.cc.NewBlockBlobClient(full).UploadStream(ctx, r, &blockblob.UploadStreamOptions{
		BlockSize: stageBlock, Concurrency: parallel,
	})
	return s.fail("upload block blob", full, err)
}

// DeleteAll deletes every blob under the store's prefix, with its
// snapshots: a benchmark's store is thrown away with it. Do not call it on
// a store that holds replicas anyone needs.
func (s *Store) DeleteAll(ctx context.Context) error {
	pager := s.cc.NewListBlobsFlatPager(&container.ListBlobsFlatOptions{Prefix: ptr(s.prefix)})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return s.fail("list", s.prefix, err)
		}
		for _, it := range page.Segment.BlobItems {
			_, err := s.cc.NewBlobClient(*it.Name).Delete(ctx, &blob.DeleteOptions{DeleteSnapshots: ptr(blob.DeleteSnapshotsOptionTypeInclude)})
			if err != nil && !isNotFound(err) {
				return s.fail("delete", *it.Name, err)
			}
		}
	}
	return nil
}
