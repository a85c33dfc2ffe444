package transport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ErrInsecureTransport: plaintext was asked for on an address that other
// hosts can reach, without the explicit insecure option.
var ErrInsecureTransport = errors.New("insecure transport")

// IsLoopback reports whether addr (HOST:PORT, or a bare HOST) reaches this
// host only: "localhost" or a loopback IP (127.0.0.0/8, ::1). An empty
// host (":7400", every interface), 0.0.0.0 and any other name are not.
func IsLoopback(addr string) bool {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(strings.TrimSuffix(host, "."), "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// NonLoopback returns the addresses of addrs that are not loopback (see
// IsLoopback), skipping empty ones; a component started with the insecure
// option names them in its WARN.
func NonLoopback(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		if a != "" && !IsLoopback(a) {
			out = append(out, a)
		}
	}
	return out
}

// CheckTransportSecurity is the insecure-mode guard of a component or
// broker about to listen on or dial addrs: without TLS, every address must
// be loopback unless insecure is set. It returns an error wrapping
// ErrInsecureTransport that names the addresses and says how to fix it.
// Empty addresses (nothing bound or dialed) are skipped.
func CheckTransportSecurity(addrs []string, tls, insecure bool) error {
	if tls || insecure {
		return nil
	}
	bad := NonLoopback(addrs)
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s reachable from other hosts and TLS is off: configure TLS "+
		"(a CA bundle, certificate and key; `replctl tls ca create` and `replctl tls cert create` write a development set), "+
		"or use a loopback address (127.0.0.1, localhost), "+
		"or set the insecure option to accept plaintext on a trusted network",
		ErrInsecureTransport, quoteList(bad))
}

func quoteList(addrs []string) string {
	q := make([]string, len(addrs))
	for i, a := range addrs {
		q[i] = fmt.Sprintf("%q", a)
	}
	if len(q) == 1 {
		return q[0] + " is"
	}
	return strings.Join(q, ", ") + " are"
}
