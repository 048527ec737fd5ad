// Package orchestrator is the logic of protecting VMs: the lifecycle of
// each VM, its health and retries, the resync window and trigger, the jobs
// that carry out the long actions, and the agent's configuration. It is
// pure logic: it runs nothing, mounts nothing and reads no clock of its own
// (every call takes the time, or a Clock is injected), so that the agent
// drives it from the outcomes of its rounds and jobs, and tests replay days
// of schedule from scripts in testdata/ in microseconds.
//
// # Lifecycle of a protected VM
//
//	            Protect             Enabled                       InitialCopyDone
//	Unprotected ───────► Enabling ─────────► InitialReplication ─────────────────► Finalizing
//	                  (prerequisites)     (copy from a snapshot;            (snapshot deleted;
//	                                       writes are logged)               log shipped, merged)
//	                                                                               │ Finalized
//	                 ResyncRequired                                                ▼
//	Resynchronizing ◄────────────── Protected ◄────────────────────────────────────┘
//	       │                        ▲  │   ▲
//	       └────────────────────────┘  │   │ CancelFailover
//	             ResyncDone   Failover │   │
//	                                   ▼   │
//	                                FailedOver
//	                                   │ Commit
//	                                   ▼
//	                                Committed
//	                                   │ Reprotect (a resynchronization first)
//	                                   ▼
//	                           ReverseReplicating ◄──► Resynchronizing (reverse)
//	                                   │ Failback
//	                                   ▼
//	                                FailedBack ──Reprotect (a resynchronization first)──► Protected
//
// Unprotect leads from any state back to Unprotected. In full:
//
//	event                from                             to
//	Protect              Unprotected                      Enabling
//	Enabled              Enabling                         InitialReplication
//	InitialCopyDone      InitialReplication               Finalizing
//	Finalized            Finalizing                       Protected, or Resynchronizing if a
//	                                                      ResyncRequired came meanwhile
//	ResyncRequired       Protected, ReverseReplicating    Resynchronizing
//	                     Enabling … Finalizing,           (unchanged; remembered)
//	                     Resynchronizing
//	ResyncDone           Resynchronizing                  the state it came from
//	Failover(planned)    Protected                        FailedOver
//	Failover(unplanned)  Protected, Resynchronizing       FailedOver
//	Failover(test)       Protected, Resynchronizing       (unchanged; a test copy exists)
//	CleanupTestFailover  (a test copy exists)             (unchanged; the copy is gone)
//	CancelFailover       FailedOver                       the state it came from
//	Commit               FailedOver                       Committed
//	Reprotect            Committed                        Resynchronizing → ReverseReplicating
//	                     FailedBack                       Resynchronizing → Protected
//	Failback             ReverseReplicating               FailedBack
//	Unprotect            any but Unprotected,             Unprotected
//	                     without a test copy
//
// VM.Apply takes the events; one that the state does not allow returns a
// *TransitionError ("cannot fail over vm1: it is InitialReplication, not
// Protected") and changes nothing. A ResyncRequired before Protected is
// remembered, and Finalized then leads to Resynchronizing. A reprotect
// always starts with a resynchronization, at once: the two sites ran apart
// (after a commit) or may have (after a failback). Every long step is a Job
// of the Jobs registry.
//
// # Health and retries
//
// A VM replicates in Enabling, InitialReplication, Finalizing, Protected,
// Resynchronizing and ReverseReplicating; the agent reports each attempt
// with VM.Failed or VM.Succeeded. Errors are classified (Classify): a
// non-recoverable one (broken disk chain, invalid replica state,
// authentication or authorisation, VM or disk not found: IsPermanent) is
// not retried and makes health Critical until someone resumes the VM; a
// recoverable one (network, low disk space, low memory, and anything
// unclassified) is retried 1, 2, 4, 8 and 10 minutes after each failure in
// turn, then every 30 minutes (RetryDelay, VM.NextRetry), with health
// Warning; a success clears it. Health is also Warning while the newest
// recovery point is older than the policy's RPO limit (twice the interval
// unless configured).
//
// # Resynchronization
//
// A disk whose change log reaches 50% of its size (Policy.ResyncThreshold)
// is resynchronized instead (VM.CheckLog), as is one whose tracking was
// lost. A resynchronization runs inside the resync window (by default
// 18:00 to 08:00 and at weekends, local time; see Window) unless asked for
// now (drfs resync --now, a reprotect): VM.ResyncDue.
//
// Concurrency: a VM is not safe for concurrent use (the agent serialises
// the calls on one VM); Jobs is.
package orchestrator
