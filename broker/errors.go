package broker

import (
	"errors"
	"fmt"
	"net"
	"regexp"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// Errors returned by the broker. Errors that reach a component or a tool
// over gRPC wrap the transport sentinels (ErrBadRequest, ErrPermission,
// ErrProtocolVersion, ErrUnavailable, ErrUnknownTable), so errors.Is works
// on both sides of the wire.
var (
	// ErrClosed is returned by calls on a closed broker, and to components
	// whose session is ended because the broker shuts down. It wraps
	// transport.ErrUnavailable.
	ErrClosed = fmt.Errorf("broker: closed: %w", transport.ErrUnavailable)
	// ErrInvalidConfig: a Config field is unusable; the message names it.
	ErrInvalidConfig = errors.New("broker: invalid config")
	// ErrSuperseded: the component opened a newer session for the same
	// instance (on this broker or another one), so this one is ended. It
	// wraps transport.ErrUnavailable: the component just reconnects.
	ErrSuperseded = fmt.Errorf("broker: session superseded by a newer one: %w", transport.ErrUnavailable)
	// ErrUnknownService: Lookup of a service the registry has never seen.
	// It wraps transport.ErrUnknownTable (gRPC NotFound).
	ErrUnknownService = fmt.Errorf("broker: unknown service: %w", transport.ErrUnknownTable)
)

// MaxEpoch is the largest epoch an instance may report (in Register.Epoch
// and TableInfo.Epoch) and so the largest a broker grants: a new epoch is
// one above every epoch reported, and a report near 2^64 would wrap the
// next grant to 0 and have the broker grant again on every step.
const MaxEpoch = 1 << 62

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// validName reports whether s is a usable service, instance, table or
// broker name: 1-128 characters of A-Z a-z 0-9 _ . -
func validName(s string) bool { return nameRE.MatchString(s) }

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{transport.ErrBadRequest}, args...)...)
}

func checkName(what, s string) error {
	if !validName(s) {
		return badRequest("%s %q must be 1-128 characters of A-Z a-z 0-9 _ . -", what, s)
	}
	return nil
}

// checkMode accepts a mode as it travels on the wire: "push", "pull",
// "auto", or "" (not set).
func checkMode(what, m string) error {
	if m == "" {
		return nil
	}
	if _, err := modes.ParseMode(m); err != nil {
		return badRequest("%s %q must be push, pull or auto", what, m)
	}
	return nil
}

func checkAddr(what, a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || port == "" || port == "0" {
		return badRequest("%s %q must be host:port", what, a)
	}
	_ = host
	return nil
}
