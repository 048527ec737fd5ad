// Package recovery materialises a recovery point: it chooses the point an
// operator names (SelectPoint: latest, latest-processed, a number, a time)
// and writes its disks into a directory (Materialize: a reflink clone of a
// directory store's replica where the file system has them, else a sparse
// copy read from the store). drfs restore, drfs failover (unplanned, test,
// plans) and the agent's planned failover share it.
package recovery
