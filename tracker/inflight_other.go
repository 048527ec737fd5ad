//go:build !linux

package tracker

var bootID = func() string { return "" }

// openInFlight: other systems keep no in-flight table; every disk is
// resynchronized after a crash.
func openInFlight(string) (*inFlight, crashState, error) { return nil, crashState{}, nil }

func (t *inFlight) detach() {}
