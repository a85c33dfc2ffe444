//go:build race

package broker

// raceEnabled: the tests run under the race detector, which makes each
// allocation and synchronization many times slower.
const raceEnabled = true
