package modes

import (
	"errors"
	"fmt"
)

// ErrInvalid is wrapped by every error about a bad mode, a bad config
// value or a bad config file, so callers can test with errors.Is.
var ErrInvalid = errors.New("invalid")

// Error is one problem in a config: where it is and what is wrong. Parse,
// Load and Validate return every problem they find, sorted by line, joined
// into one error whose message has one problem per line; each is an *Error
// (errors.As gets the first). Error wraps ErrInvalid.
type Error struct {
	// File is the path given to Load; empty for Parse and Validate.
	File string
	// Line and Column locate the offending key or value, 1-based; zero
	// when the config did not come from a file (Validate).
	Line, Column int
	// Key is the path of the offending key, e.g.
	// "tables[stores/store_managers].pull.interval"; empty for problems
	// with the document as a whole.
	Key string
	// Msg says what is wrong.
	Msg string
}

// Error formats as "FILE: line N: KEY: MSG", leaving out the parts that
// are not known.
func (e *Error) Error() string {
	s := ""
	if e.File != "" {
		s = e.File + ": "
	}
	if e.Line > 0 {
		s += fmt.Sprintf("line %d: ", e.Line)
	}
	if e.Key != "" {
		s += e.Key + ": "
	}
	return s + e.Msg
}

// Unwrap returns ErrInvalid.
func (e *Error) Unwrap() error { return ErrInvalid }
