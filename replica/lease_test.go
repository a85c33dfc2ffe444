package replica

import (
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

func TestPrimaryLease_Renew(t *testing.T) {
	// A frame renews the lease for half of it after the ping: long enough
	// that no pause of a loaded machine between the ping and the checks
	// below lets a renewed lease lapse (with a 2s lease, a 1s pause did).
	const lease = 2 * time.Minute
	tests := []struct {
		name     string
		frame    func(ping int64) *transport.SessionResponse
		held     bool // the lease holds after the frame
		regained bool
	}{
		{"primary", func(p int64) *transport.SessionResponse {
			return &transport.SessionResponse{Pong: p, LeaseMs: lease.Milliseconds(), PrimaryEpoch: 3}
		}, true, true},
		{"not primary", func(p int64) *transport.SessionResponse {
			return &transport.SessionResponse{Pong: p, LeaseMs: lease.Milliseconds()}
		}, false, false},
		{"no pong", func(int64) *transport.SessionResponse {
			return &transport.SessionResponse{LeaseMs: lease.Milliseconds(), PrimaryEpoch: 3}
		}, false, false},
		{"no lease", func(p int64) *transport.SessionResponse {
			return &transport.SessionResponse{Pong: p, PrimaryEpoch: 3}
		}, false, false},
		{"pong of long ago", func(int64) *transport.SessionResponse {
			return &transport.SessionResponse{Pong: 1, LeaseMs: lease.Milliseconds(), PrimaryEpoch: 3}
		}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The origin lies a whole lease back, so that a pong of the
			// origin has lapsed.
			l := &primaryLease{origin: time.Now().Add(-lease)}
			if l.left() > 0 {
				t.Fatal("a lease never renewed holds")
			}
			sent := l.ping()
			regained := l.renew(tt.frame(sent))
			if regained != tt.regained {
				t.Errorf("renew regained = %v, want %v", regained, tt.regained)
			}
			left := l.left()
			if (left > 0) != tt.held {
				t.Fatalf("left %v after the frame, want held=%v", left, tt.held)
			}
			if tt.held && left > lease/2 {
				t.Fatalf("left %v: more than half the lease after the ping", left)
			}
		})
	}

	// An older pong never shortens the lease, a newer one extends it.
	l := &primaryLease{origin: time.Now()}
	p1 := l.ping()
	p2 := l.ping() + int64(100*time.Millisecond)
	l.renew(&transport.SessionResponse{Pong: p2, LeaseMs: lease.Milliseconds(), PrimaryEpoch: 1})
	before := l.until.Load()
	if l.renew(&transport.SessionResponse{Pong: p1, LeaseMs: lease.Milliseconds(), PrimaryEpoch: 1}) || l.until.Load() != before {
		t.Fatal("an older pong changed the lease")
	}
}

// Without the lease the standbys' acknowledgements are kept but move no
// watermark (no write acknowledged, nothing sent to consumers); regaining
// it moves the watermark to them.
func TestSyncState_WatermarkOnlyUnderLease(t *testing.T) {
	s := newSyncState()
	a, b := &sender{}, &sender{}
	s.track(a)
	s.track(b)
	steps := []struct {
		snd    *sender
		seq    uint64
		leased bool
		mark   uint64
	}{
		{a, 5, true, 5},
		{b, 3, true, 5},
		{a, 9, false, 5}, // lease lapsed: confirmed, not visible
		{b, 12, false, 5},
		{a, 10, true, 12}, // leased again: the highest acknowledgement counts
	}
	for i, st := range steps {
		s.ack(st.snd, st.seq, 1, st.leased)
		if got, _ := s.visible(100); got != st.mark {
			t.Fatalf("step %d: watermark %d, want %d", i, got, st.mark)
		}
	}
	s.ack(a, 20, 1, false)
	s.advance(1)
	if got, _ := s.visible(100); got != 20 {
		t.Fatalf("after advance: watermark %d, want 20", got)
	}
}
