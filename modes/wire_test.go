package modes_test

import (
	"errors"
	"testing"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Every mode a message can carry goes through one parse function and back.
func TestMode_WireRoundTrip(t *testing.T) {
	tests := []struct {
		mode modes.Mode
		wire string
	}{
		{modes.Unset, ""},
		{modes.Push, transport.ModePush},
		{modes.Pull, transport.ModePull},
		{modes.Auto, "auto"},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			if got := tt.mode.Wire(); got != tt.wire {
				t.Fatalf("%v.Wire() = %q, want %q", tt.mode, got, tt.wire)
			}
			got, err := modes.ParseWire(tt.wire)
			if err != nil || got != tt.mode {
				t.Fatalf("ParseWire(%q) = %v, %v; want %v", tt.wire, got, err, tt.mode)
			}
			var u modes.Mode
			if err := u.UnmarshalText([]byte(tt.wire)); err != nil || u != tt.mode {
				t.Fatalf("UnmarshalText(%q) = %v, %v; want %v", tt.wire, u, err, tt.mode)
			}
		})
	}
}

func TestParseWire_Invalid(t *testing.T) {
	for _, s := range []string{"Push", "unset", "fast", " pull", "mode(7)"} {
		t.Run(s, func(t *testing.T) {
			m, err := modes.ParseWire(s)
			if !errors.Is(err, modes.ErrInvalid) || m != modes.Unset {
				t.Fatalf("ParseWire(%q) = %v, %v; want Unset and ErrInvalid", s, m, err)
			}
		})
	}
}
