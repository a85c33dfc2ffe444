package transport

import (
	"math/rand/v2"
	"time"
)

// Backoff is the wait between reconnection attempts: it starts at Min,
// doubles after every attempt up to Max, and starts over at Reset (after
// an attempt that made progress). With Jitter, each wait is drawn evenly
// from [d/2, d] around the current value d, so that peers that lost the
// same owner at the same moment do not reconnect in step.
//
// The zero value is not usable: set Min (> 0) and Max (>= Min). A Backoff
// is not safe for concurrent use; each retry loop keeps its own.
type Backoff struct {
	Min, Max time.Duration
	Jitter   bool

	cur time.Duration // 0: Min
	// randN returns a random duration in [0, n); nil: math/rand/v2.N.
	randN func(n time.Duration) time.Duration
}

// Current returns the wait the next attempt is based on (before jitter):
// what a log line reports as "backoff".
func (b *Backoff) Current() time.Duration {
	if b.cur == 0 {
		return b.Min
	}
	return b.cur
}

// Next returns how long to wait before the next attempt (Current, or with
// Jitter a time in [Current/2, Current]) and doubles Current, up to Max.
func (b *Backoff) Next() time.Duration {
	d := b.Current()
	b.cur = min(2*d, b.Max)
	if !b.Jitter {
		return d
	}
	randN := b.randN
	if randN == nil {
		randN = rand.N[time.Duration]
	}
	return d/2 + randN(d/2+1)
}

// Reset starts over: the next wait is Min again.
func (b *Backoff) Reset() { b.cur = 0 }
