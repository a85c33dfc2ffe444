package modes

import (
	"fmt"
)

// Mode is how a table's changes travel from its owner to a consumer.
//
// The zero value is Unset: "not set at this level of the configuration".
// Resolution (see Config.Resolve) replaces Unset with the next lower level's mode
// and finally with DefaultMode (Push), so a Mode that reaches a running
// subscription is always Push, Pull or Auto. Unset is never a mode a
// subscription runs in.
//
// Modes travel as text ("push", "pull", "auto"), never as numbers, but the
// numeric values are stable anyway: ONLY APPEND TO THIS LIST.
type Mode uint8

const (
	// Unset means "inherit": the mode comes from the next level down.
	Unset Mode = iota
	// Push streams every committed change to the consumer as it happens.
	Push
	// Pull sends nothing until the consumer asks; each pull returns a
	// coalesced delta (the latest value of each changed key).
	Pull
	// Auto switches between Push and Pull by the ratio of the owner's
	// write rate to the consumer's read rate (see Policy).
	Auto
)

var modeNames = [...]string{Unset: "unset", Push: "push", Pull: "pull", Auto: "auto"}

// ParseMode parses the text form of a mode: exactly "push", "pull" or
// "auto". Anything else, including the empty string, is an error that
// names the bad value and wraps ErrInvalid.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "push":
		return Push, nil
	case "pull":
		return Pull, nil
	case "auto":
		return Auto, nil
	}
	return Unset, fmt.Errorf("%w mode %q (want push, pull or auto)", ErrInvalid, s)
}

// Valid reports whether m is Push, Pull or Auto.
func (m Mode) Valid() bool { return m == Push || m == Pull || m == Auto }

// String returns the text form: "push", "pull", "auto", "unset" for the
// zero value, or "mode(N)" for a value outside the list.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// MarshalText implements encoding.TextMarshaler. Unset marshals to the
// empty string (so "not set" survives a round trip through JSON or YAML);
// a value outside the list is an error.
func (m Mode) MarshalText() ([]byte, error) {
	if m == Unset {
		return []byte{}, nil
	}
	if !m.Valid() {
		return nil, fmt.Errorf("%w mode %d", ErrInvalid, uint8(m))
	}
	return []byte(modeNames[m]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseWire's
// rules: the empty string is Unset, anything else goes through ParseMode.
// (The YAML config file is stricter: it rejects an empty mode; leave the
// key out to inherit.)
func (m *Mode) UnmarshalText(b []byte) error {
	v, err := ParseWire(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// ParseWire parses a mode as it travels in a message: the mode fields of
// the transport frames (Open.Mode, Start.Mode, ConsumerFrame.Mode) and of
// the broker's messages (overrides, registered table and subscription
// modes). The empty string is Unset ("not set": the next level decides;
// for Open it means push); anything else goes through ParseMode, whose
// error names the bad value. Wire is its inverse: ParseWire(m.Wire())
// returns m for Unset, Push, Pull and Auto.
func ParseWire(s string) (Mode, error) {
	if s == "" {
		return Unset, nil
	}
	return ParseMode(s)
}

// Wire returns m as it travels in a message (see ParseWire): "" for
// Unset, else its text form.
func (m Mode) Wire() string {
	if m == Unset {
		return ""
	}
	return m.String()
}

// Set implements flag.Value with the same rules as UnmarshalText, so
// `-mode=pull` sets and `-mode=` clears.
func (m *Mode) Set(s string) error { return m.UnmarshalText([]byte(s)) }
