package transport

import (
	"fmt"
	"regexp"
)

// NameRule says in words which names ValidName accepts, for messages.
const NameRule = "1-128 characters of A-Z a-z 0-9 _ . -"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// ValidName reports whether s is usable as a service, instance, table or
// broker name: 1 to 128 characters of A-Z a-z 0-9 _ . - (NameRule). Every
// name that travels in a message of this package, and every name a
// component or broker is configured with, follows this one rule.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// CheckName returns nil when s is a valid name (ValidName), else an error
// naming what (the field or role of the name) and s:
//
//	Config.Service "a b" must be 1-128 characters of A-Z a-z 0-9 _ . -
//
// It wraps no sentinel: the caller wraps it in its own (ErrBadRequest for
// a peer's message, its invalid-config error for a config field).
func CheckName(what, s string) error {
	if !ValidName(s) {
		return fmt.Errorf("%s %q must be %s", what, s, NameRule)
	}
	return nil
}
