// Package bench holds the workload generators and the benchmark runners
// behind "drfs bench".
//
// The mount benchmark (RunMount) runs the same block workloads, one after
// the other, on three targets in one process: the backing directory itself
// (native), go-fuse's plain loopback mounted with the options drfs uses and
// kernel passthrough off, and the drfs tracking mount with a real change log;
// on request also libfuse's reference server passthrough_hp in its own
// process. Every job starts from a stated page-cache case, cold or warm.
// The ratios between them are what matters: the figures of one machine are
// not comparable with another's. The workloads run under fio when it is
// installed and under a built-in Go generator otherwise.
package bench
