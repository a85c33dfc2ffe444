package modes

import (
	"fmt"
	"math"
	"time"
)

// Observation is what a Policy is told at one moment: the owner's write
// rate (changes/s, from its heartbeats) and the consumer's read rate
// (reads/s of this table), both measured by the caller, for example with a
// RateMeter.
type Observation struct {
	At               time.Time
	OwnerWriteRate   float64
	ConsumerReadRate float64
}

// Decision is a Policy's answer to an Observation.
type Decision struct {
	// Mode is the mode to run in from now on: Push or Pull.
	Mode Mode
	// Switched is true when Mode differs from the previous decision's.
	Switched bool
	// Reason says why: for a switch, the ratio, the threshold and how long
	// it held; otherwise what the policy is waiting for.
	Reason string
}

// Policy is auto mode's decision logic. It is pure: it starts no goroutine
// and reads no clock; the caller feeds it observations with their time
// and runs in the mode of the returned Decision. It is not safe for
// concurrent use.
//
// With ratio = OwnerWriteRate / ConsumerReadRate:
//
//   - in Push, it switches to Pull once ratio > Ratio has held at every
//     observation for at least Window;
//   - in Pull, it switches to Push once ratio < LowRatio has held at every
//     observation for at least Window;
//   - a switch is also at least MinDwell after the previous one.
//
// A streak starts at the first observation that meets the condition and
// ends at the first that does not, and a switch starts a new one, so two
// switches are always at least max(Window, MinDwell) apart however the
// load alternates. Ratio exactly at a threshold does not count. No reads
// and some writes is an infinite ratio (pull); no writes and some reads is
// 0 (push); no reads and no writes, or a negative, NaN or infinite rate,
// is no evidence either way and ends the streak. An observation older than
// the previous one counts as taken at the previous one's time.
type Policy struct {
	s       AutoSettings
	mode    Mode
	last    time.Time // the latest observation time seen
	holding bool      // a streak towards a switch is running
	since   time.Time // its start

	switched   bool // there has been a switch
	switchedAt time.Time
	reason     string
}

// NewPolicy returns a policy that starts in initial (Push or Pull). Push
// is the usual start: a new subscription is fresh while the policy learns
// the rates.
func NewPolicy(s AutoSettings, initial Mode) (*Policy, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("new policy: %w", err)
	}
	if initial != Push && initial != Pull {
		return nil, fmt.Errorf("new policy: %w initial mode %s (want push or pull)", ErrInvalid, initial)
	}
	return &Policy{s: s, mode: initial}, nil
}

// Mode returns the current mode: Push or Pull.
func (p *Policy) Mode() Mode { return p.mode }

// Settings returns the settings the policy was built with.
func (p *Policy) Settings() AutoSettings { return p.s }

// LastSwitch returns the time and reason of the last switch; ok is false
// when there has been none.
func (p *Policy) LastSwitch() (at time.Time, reason string, ok bool) {
	return p.switchedAt, p.reason, p.switched
}

// Observe takes one observation and returns the mode to run in.
func (p *Policy) Observe(o Observation) Decision {
	at := o.At
	if at.Before(p.last) {
		at = p.last
	}
	p.last = at
	keep := func(reason string) Decision {
		return Decision{Mode: p.mode, Reason: reason}
	}

	w, r := o.OwnerWriteRate, o.ConsumerReadRate
	if !validRate(w) || !validRate(r) {
		p.holding = false
		return keep(fmt.Sprintf("ignored: bad rates (writes %g/s, reads %g/s)", w, r))
	}
	if w == 0 && r == 0 {
		p.holding = false
		return keep("idle: no writes and no reads")
	}
	ratio := math.Inf(1)
	if r > 0 {
		ratio = w / r
	}

	target, cmp, threshold := Pull, ">", p.s.Ratio
	meets := ratio > p.s.Ratio
	if p.mode == Pull {
		target, cmp, threshold = Push, "<", p.s.LowRatio
		meets = ratio < p.s.LowRatio
	}
	rates := fmt.Sprintf("writes %s/s, reads %s/s", num(w), num(r))
	if !meets {
		p.holding = false
		return keep(fmt.Sprintf("staying %s: write/read ratio %s is not %s %g (%s)", p.mode, num(ratio), cmp, threshold, rates))
	}
	if !p.holding {
		p.holding, p.since = true, at
	}
	held := at.Sub(p.since)
	if held < p.s.Window {
		return keep(fmt.Sprintf("towards %s: write/read ratio %s %s %g for %s of %s (%s)",
			target, num(ratio), cmp, threshold, held, p.s.Window, rates))
	}
	if p.switched && at.Sub(p.switchedAt) < p.s.MinDwell {
		return keep(fmt.Sprintf("towards %s: waiting out the minimum dwell of %s since the last switch (%s)",
			target, p.s.MinDwell, rates))
	}
	p.mode = target
	p.holding = false
	p.switched, p.switchedAt = true, at
	p.reason = fmt.Sprintf("write/read ratio %s %s %g for %s (%s)", num(ratio), cmp, threshold, held, rates)
	return Decision{Mode: p.mode, Switched: true, Reason: p.reason}
}

// num formats a rate or ratio for a reason: whole numbers from 1000 up,
// four significant digits below.
func num(x float64) string {
	if math.Abs(x) >= 1000 && !math.IsInf(x, 0) {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.4g", x)
}

func validRate(x float64) bool { return x >= 0 && !math.IsInf(x, 1) }
