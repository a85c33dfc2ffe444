package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// httpFlags are the flags of the HTTP server's security (the status page,
// /api/status and /metrics): HTTPS with client certificates, a bearer
// token, or both (either then proves the caller).
type httpFlags struct {
	tlsCA, tlsCert, tlsKey string
	trustDomain            string
	tokenFile              string
	insecure               bool
}

// register declares the flags on fs.
func (f *httpFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.tlsCert, "http-tls-cert", "", "PEM certificate `file` of the HTTP server, with a replmesh SPIFFE ID (enables HTTPS with client certificates; needs -http-tls-key and -http-tls-ca)")
	fs.StringVar(&f.tlsKey, "http-tls-key", "", "PEM key `file` of -http-tls-cert")
	fs.StringVar(&f.tlsCA, "http-tls-ca", "", "PEM CA bundle `file`: HTTP clients present a certificate that chains to it, of an admin or operator identity")
	fs.StringVar(&f.trustDomain, "http-trust-domain", "", "SPIFFE trust `domain` HTTP client certificates must belong to (default: any)")
	fs.StringVar(&f.tokenFile, "http-token-file", "", "`file` holding a bearer token HTTP clients present (Authorization: Bearer, or as the Basic password); re-read when it changes")
	fs.BoolVar(&f.insecure, "http-insecure", false, "serve HTTP without TLS or token on an address other hosts can reach (refused otherwise)")
}

// httpServing is the HTTP server the flags ask for.
type httpServing struct {
	addr     string // "" when off
	guard    *transport.HTTPGuard
	insecure bool
}

// parseSettingsHTTP is parseSettings with the HTTP server's security
// flags: it also loads their TLS files and token and refuses an HTTP
// address other hosts can reach without TLS or a token, unless
// -http-insecure.
func parseSettingsHTTP(args []string, stderr io.Writer) (*settings, *httpServing, error) {
	var hf httpFlags
	st, err := parseSettingsWith(args, stderr, hf.register)
	if err != nil {
		return nil, nil, err
	}
	hs, err := hf.serving(st.httpAddr, st.log)
	return st, hs, err
}

// serving loads what the flags name for the HTTP server on addr.
func (f *httpFlags) serving(addr string, log *slog.Logger) (*httpServing, error) {
	g := &transport.HTTPGuard{Roles: []transport.Role{transport.RoleAdmin, transport.RoleOperator}, Realm: "replbroker"}
	if f.tlsCert != "" || f.tlsKey != "" || f.tlsCA != "" || f.trustDomain != "" {
		files := transport.TLSFiles{CA: f.tlsCA, Cert: f.tlsCert, Key: f.tlsKey, TrustDomain: f.trustDomain}
		if files.CA == "" || files.Cert == "" || files.Key == "" {
			return nil, errors.New("http tls: -http-tls-cert, -http-tls-key and -http-tls-ca are all required")
		}
		src, err := transport.NewTLSSource(files, log.With("http", "tls"))
		if err != nil {
			return nil, fmt.Errorf("http tls: %w", err)
		}
		g.TLS = src
	}
	if f.tokenFile != "" {
		tok, err := transport.LoadHTTPToken(f.tokenFile, 0, log)
		if err != nil {
			return nil, err
		}
		g.Token = tok
	}
	hs := &httpServing{addr: addr, guard: g, insecure: f.insecure}
	if addr == "" {
		return hs, nil
	}
	if err := g.CheckBind(addr, f.insecure); err != nil {
		return nil, fmt.Errorf("-http: %w (for HTTP: -http-tls-cert, -http-tls-key and -http-tls-ca, or -http-token-file, or -http-insecure)", err)
	}
	switch far := transport.NonLoopback([]string{addr}); {
	case len(far) == 0:
	case !g.Secured():
		log.Warn("insecure mode: HTTP serves the status page, /api/status and /metrics in plaintext without authentication on an address other hosts can reach (-http-insecure)", "http", addr)
	case g.TLS == nil:
		log.Warn("HTTP without TLS on an address other hosts can reach: the bearer token crosses the network in the clear (add -http-tls-cert, -http-tls-key and -http-tls-ca)", "http", addr)
	}
	return hs, nil
}

// listen opens the HTTP server's listener (TLS when configured) and
// returns the server of handler behind the guard; serve it with
// srv.Serve(lis).
func (hs *httpServing) listen(handler http.Handler, log *slog.Logger) (*http.Server, net.Listener, error) {
	lis, err := net.Listen("tcp", hs.addr)
	if err != nil {
		return nil, nil, fmt.Errorf("http listen %s: %w", hs.addr, err)
	}
	srv := &http.Server{
		Handler:           hs.guard.Handler(handler),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return srv, hs.guard.Listener(lis), nil
}

// auth names the HTTP server's authentication for the start log line.
func (hs *httpServing) auth() string {
	switch g := hs.guard; {
	case g.TLS != nil && g.Token != nil:
		return "client-cert-or-token"
	case g.TLS != nil:
		return "client-cert"
	case g.Token != nil:
		return "token"
	}
	return "none"
}
