package transport

import (
	"reflect"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name  string
		b     Backoff
		calls string // N: Next, R: Reset
		want  []time.Duration
	}{
		{"doubles up to max", Backoff{Min: 10 * ms, Max: 50 * ms}, "NNNNN",
			[]time.Duration{10 * ms, 20 * ms, 40 * ms, 50 * ms, 50 * ms}},
		{"reset starts over", Backoff{Min: 10 * ms, Max: 50 * ms}, "NNNRNN",
			[]time.Duration{10 * ms, 20 * ms, 40 * ms, 10 * ms, 20 * ms}},
		{"min equals max", Backoff{Min: time.Second, Max: time.Second}, "NN",
			[]time.Duration{time.Second, time.Second}},
		// The jitter's random draw is replaced by its extremes below.
		{"jitter at its lowest is half", Backoff{Min: 10 * ms, Max: 40 * ms, Jitter: true,
			randN: func(time.Duration) time.Duration { return 0 }}, "NNNN",
			[]time.Duration{5 * ms, 10 * ms, 20 * ms, 20 * ms}},
		{"jitter at its highest is the whole", Backoff{Min: 10 * ms, Max: 40 * ms, Jitter: true,
			randN: func(n time.Duration) time.Duration { return n - 1 }}, "NNNN",
			[]time.Duration{10 * ms, 20 * ms, 40 * ms, 40 * ms}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			var got []time.Duration
			for _, c := range tt.calls {
				if c == 'R' {
					b.Reset()
					continue
				}
				got = append(got, b.Next())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("waits %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBackoff_Current(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 4 * time.Second, Jitter: true}
	for _, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if got := b.Current(); got != want {
			t.Fatalf("Current = %s, want %s", got, want)
		}
		b.Next()
	}
	b.Reset()
	if got := b.Current(); got != time.Second {
		t.Fatalf("Current after Reset = %s, want 1s", got)
	}
}

// With the real random source every jittered wait lies in [d/2, d].
func TestBackoff_JitterBounds(t *testing.T) {
	b := Backoff{Min: 3 * time.Millisecond, Max: time.Second, Jitter: true}
	for i := range 200 {
		if i%12 == 0 {
			b.Reset()
		}
		d := b.Current()
		if got := b.Next(); got < d/2 || got > d {
			t.Fatalf("wait %s outside [%s, %s]", got, d/2, d)
		}
	}
}
