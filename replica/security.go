package replica

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/replmesh/replmesh/transport"
)

// checkSecurity is Open's check of the transport's security: with
// Config.TLS the certificate must name this instance; without TLS every
// address the component listens on or dials at Open must be loopback
// unless Config.Insecure, which is then said at WARN.
func checkSecurity(cfg *Config, log *slog.Logger) error {
	if cfg.TLS != nil {
		id := cfg.TLS.Identity()
		if id.Role != transport.RoleService || id.Service != cfg.Service || id.Instance != cfg.Instance {
			return fmt.Errorf("%w: Config.TLS: the certificate's identity is %s, this component is %s/%s (Config.Service/Config.Instance)",
				ErrInvalid, id, cfg.Service, cfg.Instance)
		}
		return nil
	}
	addrs := append([]string{listenAddr(cfg)}, cfg.Brokers...)
	tls := cfg.Transport.TLS != nil
	if err := transport.CheckTransportSecurity(addrs, tls, cfg.Insecure); err != nil {
		return fmt.Errorf("%w (Config.Insecure)", err)
	}
	if cfg.Insecure && !tls {
		log.Warn("insecure mode: replication without TLS; any host that reaches these addresses can read and forge replication traffic",
			"non_loopback", transport.NonLoopback(addrs))
	}
	return nil
}

// listenAddr is the address the component will listen on: its Listener's
// when it is a network one ("" for an in-memory listener), else ListenAddr.
func listenAddr(cfg *Config) string {
	if ln := cfg.Listener; ln != nil {
		if a := ln.Addr(); a.Network() == "tcp" || a.Network() == "udp" {
			return a.String()
		}
		return ""
	}
	return cfg.ListenAddr
}

// checkDial is the insecure-mode guard of a dial the component makes
// after Open (to an owner the broker names, or SubscribeOptions.Addr). An
// address that is not HOST:PORT is no network address (an in-memory
// network's, reached through a dialer of Transport.DialOptions): nothing
// to guard.
func (c *Component) checkDial(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil
	}
	return transport.CheckTransportSecurity([]string{addr}, c.cfg.TLS != nil || c.cfg.Transport.TLS != nil, c.cfg.Insecure)
}

// serverOptions are the replication server's: Config.TLS's mTLS server
// configuration when set, and the stream limit.
func (c *Component) serverOptions() transport.Options {
	o := c.cfg.Transport
	if c.cfg.TLS != nil {
		o.TLS = c.cfg.TLS.ServerConfig()
	}
	o.MaxConcurrentStreams = c.cfg.MaxConcurrentStreams
	return o
}

// dialOptions are the options of a dial to a peer that check accepts:
// Config.TLS's mTLS client configuration when set.
func (c *Component) dialOptions(check transport.IdentityCheck) transport.Options {
	o := c.cfg.Transport
	if c.cfg.TLS != nil {
		o.TLS = c.cfg.TLS.ClientConfig(check)
	}
	return o
}
