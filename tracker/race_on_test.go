//go:build race

package tracker

// raceEnabled: the race detector slows the randomized tests down about
// tenfold, so they run fewer steps under it.
const raceEnabled = true
