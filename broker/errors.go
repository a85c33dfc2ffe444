package broker

import (
	"errors"
	"fmt"
	"net"

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

// validName reports whether s is a usable service, instance, table or
// broker name (transport.ValidName: the one rule).
func validName(s string) bool { return transport.ValidName(s) }

func badRequest(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{transport.ErrBadRequest}, args...)...)
}

// checkName is transport.CheckName as a bad request.
func checkName(what, s string) error {
	if err := transport.CheckName(what, s); err != nil {
		return fmt.Errorf("%w: %w", transport.ErrBadRequest, err)
	}
	return nil
}

// checkMode accepts a mode as it travels on the wire: "push", "pull",
// "auto", or "" (not set).
func checkMode(what, m string) error {
	if _, err := modes.ParseWire(m); err != nil {
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
