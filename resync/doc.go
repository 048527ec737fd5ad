// Package resync repairs a replica whose change tracking was lost by
// sending only the chunks that differ, as Hyper-V Replica and Azure Site
// Recovery do: the source disk and the replica are cut into fixed chunks,
// the chunks' checksums are compared, and only the differing chunks are
// sent. docs/resync.md describes the scheme, its costs and its benchmarks.
//
// Diff compares in levels: 1 MiB chunks first, then smaller chunks only
// inside the coarse chunks that differ, down to the change log's block
// size, so that both the checksums exchanged and the data resent stay
// small. The store computes the replica's checksums where the replica
// lives (target.Checksummer: a directory store reads its replica file, a
// remote server sends only the sums); holes on either side cost no reads.
// The result is a list of byte ranges, which shipper.ShipCopyDisks sends
// from the source file through the usual Stage and Commit, all or nothing.
//
// A comparison is resumable: its Cursor, persisted by the caller, lets a
// Diff cut by a network outage or a restart go on where it stopped.
// Verify is the same comparison run to check a replica; it changes nothing.
package resync
