package modes

import "time"

// RateMeter estimates an event rate (events/s) over a sliding window from
// a running count sampled at times the caller chooses. Like Policy it is
// pure: the time comes in with each sample. It is not safe for concurrent
// use; on a hot path, count with an atomic counter and Record its total
// on a tick (a read counter, or an owner's head seq).
//
// Rate is the count between the newest sample and a baseline: the newest
// sample that is at least Window older (or the oldest kept, early on).
// Samples closer together than Window/32 are coalesced, so memory stays
// bounded however often Record is called.
type RateMeter struct {
	window  time.Duration
	step    time.Duration
	total   uint64 // for Add
	samples []rateSample
}

type rateSample struct {
	at    time.Time
	total uint64
}

// NewRateMeter returns a meter over window; a window <= 0 means 10s.
func NewRateMeter(window time.Duration) *RateMeter {
	if window <= 0 {
		window = 10 * time.Second
	}
	return &RateMeter{window: window, step: window / 32}
}

// Window returns the meter's window.
func (m *RateMeter) Window() time.Duration { return m.window }

// Record samples the running count total at time at. A total below the
// previous one (the counter was reset: a new table history, a restart)
// starts the meter afresh from this sample; a sample older than the
// newest one is ignored.
func (m *RateMeter) Record(at time.Time, total uint64) {
	m.total = total
	n := len(m.samples)
	if n > 0 {
		last := m.samples[n-1]
		if at.Before(last.at) {
			return
		}
		if total < last.total {
			m.samples = append(m.samples[:0], rateSample{at, total})
			return
		}
	}
	s := rateSample{at, total}
	if n >= 2 && at.Sub(m.samples[n-2].at) < m.step {
		m.samples[n-1] = s // coalesce: keep the spacing at least step
	} else {
		m.samples = append(m.samples, s)
	}
	// Drop samples that are not needed as the baseline: keep the newest
	// one at least window older than at, and everything after it.
	cut := 0
	for i := 1; i < len(m.samples); i++ {
		if at.Sub(m.samples[i].at) >= m.window {
			cut = i
		} else {
			break
		}
	}
	if cut > 0 {
		k := copy(m.samples, m.samples[cut:])
		m.samples = m.samples[:k]
	}
}

// Add counts n more events at time at (a Record of the meter's own
// running total).
func (m *RateMeter) Add(at time.Time, n uint64) { m.Record(at, m.total+n) }

// Rate returns events/s between the baseline and the newest sample; 0
// until there are two samples at different times.
func (m *RateMeter) Rate() float64 {
	n := len(m.samples)
	if n < 2 {
		return 0
	}
	first, last := m.samples[0], m.samples[n-1]
	dt := last.at.Sub(first.at)
	if dt <= 0 {
		return 0
	}
	return float64(last.total-first.total) / dt.Seconds()
}

// Reset forgets every sample.
func (m *RateMeter) Reset() {
	m.samples = m.samples[:0]
	m.total = 0
}
