// Package tracker is the change log of drfs: for every VM of a source
// directory it records, per generation, which blocks of which disk changed
// and their data, so that a frozen generation can be shipped and replayed
// onto the replica as one consistent cut.
//
// Block data goes into append-only segment files, one per generation of a
// VM; a block written again in the same generation is overwritten in place,
// so a generation keeps only the newest data of each block. The index of
// the active generation lives in memory and is rebuilt from its segment
// after a restart; Rotate stores the index of the generation it freezes in
// Pebble, in generation, disk and block order, and Drop deletes it as one
// key range with the segment. docs/log-format.md specifies both formats.
//
// The log never fails a workload's write: when a change cannot be
// recorded, after an unclean shutdown, or when a disk was changed outside
// the mount, the disk is marked for resynchronization with a reason
// (DESIGN.md, invariant 2).
//
// All file access goes through a Pebble vfs.FS, so tests run it on the
// crashable and the error-injecting in-memory filesystems.
package tracker
