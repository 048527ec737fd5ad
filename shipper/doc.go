// Package shipper drains the frozen generations of the change log to a
// target store: for each generation of a VM, in order, it encodes every
// changed disk as a frame stream (LZ4 where that saves space, a checksum per
// block) and hands it to Store.Stage as it is encoded, then commits the
// generation, and only once the store acknowledged the commit drops the
// generation from the log (DESIGN.md, invariants 4 and 5).
//
// The shipper sees the log through Source, a small interface; FromLog adapts
// a *tracker.Log. Rate limiting and retries wrap a target.Store (RateLimit,
// Retry) rather than living in each store. Loop rotates every VM at an
// interval, ships what froze and keeps the state of each VM; time comes from
// a Clock, so tests run the intervals and back-offs without sleeping.
//
// Errors follow the target's split: an error for which target.IsPermanent
// reports true (a corrupt stream, a wrong source, a bad name, a generation
// the log and the target disagree on) stops the VM until someone acts;
// any other error is retried at the next round.
package shipper
