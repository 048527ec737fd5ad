// Package wrap holds the wrappers a source puts around a target.Store:
// Retry, which retries calls that fail with a retryable error, and
// RateLimit, which bounds the bytes shipped per second. Both keep the
// store's optional capabilities (target.Checksummer), and both pass
// target/storetest around a directory store.
package wrap
