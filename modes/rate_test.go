package modes

import (
	"math"
	"testing"
	"time"
)

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestRateMeter_Steady(t *testing.T) {
	m := NewRateMeter(10 * time.Second)
	if m.Rate() != 0 {
		t.Errorf("empty meter rate = %v", m.Rate())
	}
	// 10 events every 100ms = 100/s.
	for i := range 300 {
		m.Add(t0.Add(time.Duration(i)*100*time.Millisecond), 10)
		if i == 0 && m.Rate() != 0 {
			t.Errorf("one sample: rate = %v, want 0", m.Rate())
		}
	}
	if got := m.Rate(); !near(got, 100) {
		t.Errorf("rate = %v, want 100", got)
	}
	if m.Window() != 10*time.Second {
		t.Errorf("Window = %v", m.Window())
	}
}

func TestRateMeter_FollowsAStep(t *testing.T) {
	m := NewRateMeter(4 * time.Second)
	total := uint64(0)
	at := t0
	step := func(perSec uint64, secs int) {
		for range secs * 10 {
			at = at.Add(100 * time.Millisecond)
			total += perSec / 10
			m.Record(at, total)
		}
	}
	step(1000, 10)
	if got := m.Rate(); !near(got, 1000) {
		t.Errorf("rate = %v, want 1000", got)
	}
	step(0, 2) // half the window idle: half the rate
	if got := m.Rate(); math.Abs(got-500) > 30 {
		t.Errorf("rate half a window after stopping = %v, want about 500", got)
	}
	step(0, 5) // a whole window idle
	if got := m.Rate(); got != 0 {
		t.Errorf("rate a window after stopping = %v, want 0", got)
	}
}

func TestRateMeter_EarlyUsesWhatItHas(t *testing.T) {
	m := NewRateMeter(10 * time.Second)
	m.Record(t0, 0)
	m.Record(t0.Add(time.Second), 50)
	if got := m.Rate(); !near(got, 50) {
		t.Errorf("rate after 1s = %v, want 50", got)
	}
}

func TestRateMeter_SparseSamples(t *testing.T) {
	m := NewRateMeter(time.Second)
	m.Record(t0, 0)
	m.Record(t0.Add(time.Minute), 600)
	if got := m.Rate(); !near(got, 10) {
		t.Errorf("rate over a sparse minute = %v, want 10", got)
	}
}

func TestRateMeter_CounterReset(t *testing.T) {
	m := NewRateMeter(10 * time.Second)
	m.Record(t0, 1000)
	m.Record(t0.Add(time.Second), 2000)
	m.Record(t0.Add(2*time.Second), 5) // a new history: seqs start again
	if got := m.Rate(); got != 0 {
		t.Errorf("rate right after a reset = %v, want 0", got)
	}
	m.Record(t0.Add(3*time.Second), 25)
	if got := m.Rate(); !near(got, 20) {
		t.Errorf("rate after a reset = %v, want 20", got)
	}
}

func TestRateMeter_IgnoresTimeGoingBack(t *testing.T) {
	m := NewRateMeter(10 * time.Second)
	m.Record(t0, 0)
	m.Record(t0.Add(2*time.Second), 20)
	m.Record(t0.Add(time.Second), 1000)
	if got := m.Rate(); !near(got, 10) {
		t.Errorf("rate = %v, want 10 (the late sample ignored)", got)
	}
	m.Record(t0.Add(2*time.Second), 20) // same time, same total
	if got := m.Rate(); !near(got, 10) {
		t.Errorf("rate = %v, want 10", got)
	}
}

func TestRateMeter_BoundedMemory(t *testing.T) {
	m := NewRateMeter(time.Second)
	for i := range 100_000 {
		m.Add(t0.Add(time.Duration(i)*10*time.Microsecond), 1) // 100,000/s
	}
	if n := len(m.samples); n > 40 {
		t.Errorf("%d samples kept, want at most about 34", n)
	}
	if got := m.Rate(); !near(got, 100_000) {
		t.Errorf("rate = %v, want 100000", got)
	}
}

func TestRateMeter_Reset(t *testing.T) {
	m := NewRateMeter(0) // default window
	if m.Window() != 10*time.Second {
		t.Errorf("default window = %v", m.Window())
	}
	m.Add(t0, 5)
	m.Add(t0.Add(time.Second), 5)
	m.Reset()
	if m.Rate() != 0 {
		t.Errorf("rate after Reset = %v", m.Rate())
	}
	m.Add(t0.Add(2*time.Second), 3)
	m.Add(t0.Add(3*time.Second), 3)
	if got := m.Rate(); !near(got, 3) {
		t.Errorf("rate = %v, want 3", got)
	}
}
