// Package svc holds what the marketplace's service binaries (cmd/stores and
// cmd/products) share: the common flags and the replica.Config built from
// them (with the per-table mode file of package modes), the slog logger,
// JSON answers, the HTTP server's life cycle with a graceful stop, and the
// process around them (run.go: Main, Parse, and Run, which opens and closes
// the service).
package svc

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// Flags are the flags every service binary takes.
type Flags struct {
	Instance        string
	Listen          string
	HTTP            string
	Data            string
	Brokers         string
	Modes           string
	MinSyncStandbys int
	SyncTimeout     time.Duration
	Durability      string
	LogFormat       string
	LogLevel        string
	// HTTPTokenFile names a file holding the bearer token every HTTP
	// request must carry (-http-token-file); "" serves HTTP open.
	HTTPTokenFile string
	// HTTPInsecure lets HTTP serve open on an address other hosts can
	// reach (-http-insecure).
	HTTPInsecure bool
	// Insecure allows plaintext replication on a non-loopback -listen or
	// -brokers address (-insecure).
	Insecure bool
	// TLSCA, TLSCert and TLSKey name the CA bundle, this instance's
	// certificate (with its SPIFFE identity) and key: every replication
	// link runs on mTLS with identities (replica.Config.TLS). All three or
	// none.
	TLSCA, TLSCert, TLSKey string
	// Policy names the access policy file (replica.Config.AccessPolicy):
	// which other services may read this service's tables.
	Policy string
}

// Register declares the common flags on fs with the given defaults for
// -instance and -http.
func Register(fs *flag.FlagSet, instance, httpAddr string) *Flags {
	f := &Flags{}
	fs.StringVar(&f.Instance, "instance", instance, "instance `name`, unique in the service")
	fs.StringVar(&f.Listen, "listen", "127.0.0.1:0", "replication (gRPC) listen `address`; port 0 picks a free port (the broker tells peers which)")
	fs.StringVar(&f.HTTP, "http", httpAddr, "HTTP API listen `address`")
	fs.StringVar(&f.Data, "data", "", "data `dir` (badger); empty: in memory, lost at exit")
	fs.StringVar(&f.Brokers, "brokers", broker.DefaultGRPCAddr, "comma-separated gRPC `addresses` of brokers")
	fs.StringVar(&f.Modes, "modes", "", "per-table mode config `file` (the modes YAML the broker reads too)")
	fs.IntVar(&f.MinSyncStandbys, "min-sync-standbys", 0, "a write returns only once this many standbys hold it")
	fs.DurationVar(&f.SyncTimeout, "sync-timeout", 5*time.Second, "bound on the wait for -min-sync-standbys")
	fs.StringVar(&f.Durability, "durability", "sync", "write durability: sync (fsync before a write returns) or async")
	fs.StringVar(&f.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.StringVar(&f.HTTPTokenFile, "http-token-file", "", "`file` holding a bearer token every HTTP request (the API and /metrics) must carry: Authorization: Bearer TOKEN; re-read when it changes")
	fs.BoolVar(&f.HTTPInsecure, "http-insecure", false, "serve HTTP without a token on an address other hosts can reach (refused otherwise)")
	fs.BoolVar(&f.Insecure, "insecure", false, "allow plaintext replication on a non-loopback -listen or -brokers address (a trusted network only)")
	fs.StringVar(&f.TLSCA, "tls-ca", "", "PEM CA bundle `file`: replication runs on mTLS, peers authorized by their certificate's identity (with -tls-cert and -tls-key; reloaded on SIGHUP and when the files change)")
	fs.StringVar(&f.TLSCert, "tls-cert", "", "PEM certificate `file` of this instance, with its identity spiffe://TRUST-DOMAIN/replmesh/SERVICE/INSTANCE")
	fs.StringVar(&f.TLSKey, "tls-key", "", "PEM private key `file` of -tls-cert")
	fs.StringVar(&f.Policy, "policy", "", "access policy `file`: which services may read which of this service's tables (the brokers' policy file; reloaded on SIGHUP)")
	return f
}

// Logger returns the slog logger the flags ask for, writing to w.
func (f *Flags) Logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", f.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch f.LogFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", f.LogFormat)
}

// Config builds the component config of an owner instance of service
// (Config.Owner: the broker grants the primary lease), loading the -modes
// file when one is given.
func (f *Flags) Config(service string, log *slog.Logger) (replica.Config, error) {
	cfg := replica.DefaultConfig()
	cfg.Service = service
	cfg.Instance = f.Instance
	cfg.ListenAddr = f.Listen
	cfg.DataDir = f.Data
	cfg.Logger = log
	for _, b := range strings.Split(f.Brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			cfg.Brokers = append(cfg.Brokers, b)
		}
	}
	if len(cfg.Brokers) == 0 {
		return cfg, errors.New("-brokers: at least one broker address is needed")
	}
	cfg.Owner = true
	cfg.Insecure = f.Insecure
	cfg.MinSyncStandbys = f.MinSyncStandbys
	cfg.SyncTimeout = f.SyncTimeout
	switch f.Durability {
	case "sync":
		cfg.Durability = replica.Sync
	case "async":
		cfg.Durability = replica.Async
	default:
		return cfg, fmt.Errorf("-durability %q: want sync or async", f.Durability)
	}
	// Notice a returning or moved owner quickly (the default backs off to 5s).
	cfg.ReconnectMax = time.Second
	if f.Modes != "" {
		m, err := modes.Load(f.Modes)
		if err != nil {
			return cfg, err
		}
		cfg.Modes = m
	}
	if err := f.security(&cfg, log); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

// security sets cfg.TLS from -tls-ca, -tls-cert and -tls-key and
// cfg.AccessPolicy from -policy.
func (f *Flags) security(cfg *replica.Config, log *slog.Logger) error {
	switch n := countSet(f.TLSCA, f.TLSCert, f.TLSKey); n {
	case 0:
	case 3:
		src, err := transport.NewTLSSource(transport.TLSFiles{CA: f.TLSCA, Cert: f.TLSCert, Key: f.TLSKey}, log)
		if err != nil {
			return fmt.Errorf("-tls-*: %w", err)
		}
		if id := src.Identity(); id.Role != transport.RoleService || id.Service != cfg.Service || id.Instance != cfg.Instance {
			return fmt.Errorf("-tls-cert: the certificate is %s, want an identity of service %q instance %q", id, cfg.Service, cfg.Instance)
		}
		cfg.TLS = src
	default:
		return errors.New("-tls-ca, -tls-cert and -tls-key go together")
	}
	if f.Policy != "" {
		p, err := modes.LoadAccessPolicy(f.Policy)
		if err != nil {
			return err
		}
		cfg.AccessPolicy = p
	}
	return nil
}

func countSet(vals ...string) int {
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	return n
}

// Reload re-reads what the flags name that may change while c runs: the
// TLS files (-tls-*; a bad set keeps the material in force) and the
// -policy file (a bad file keeps the policy in force). It returns the
// first error; the binaries call it on SIGHUP.
func (f *Flags) Reload(c *replica.Component, log *slog.Logger) error {
	var first error
	if src := c.Config().TLS; src != nil {
		if err := src.Reload(); err != nil { // logged by the source
			first = fmt.Errorf("reload TLS: %w", err)
		}
	}
	if f.Policy != "" {
		p, err := modes.LoadAccessPolicy(f.Policy)
		if err != nil {
			log.Warn("access policy not reloaded: the policy in force stays", "policy", f.Policy, "err", err)
			if first == nil {
				first = err
			}
		} else {
			c.ReloadAccessPolicy(p)
		}
	}
	return first
}

// ReloadOnHUP calls f.Reload on every SIGHUP until ctx is done (in its
// own goroutine, which it stops before it returns).
func (f *Flags) ReloadOnHUP(ctx context.Context, c *replica.Component, log *slog.Logger) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading")
				_ = f.Reload(c, log)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}

// Registry returns a Prometheus registry with the component's collector and
// the Go and process collectors.
func Registry(c *replica.Component) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Metrics(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// MetricsHandler serves reg in the Prometheus text format.
func MetricsHandler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// WriteJSON answers code with v as JSON.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// ErrorBody is the JSON body of every error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

// WriteError answers code with {"error": msg}.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, ErrorBody{Error: msg})
}

// MaxBody bounds a request body.
const MaxBody = 64 << 10

// ReadJSON decodes the request body into v (unknown fields are an error);
// on failure it answers 400 and returns false.
func ReadJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		WriteError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return false
	}
	return true
}

// Duration is a time.Duration that marshals as a string ("1.5s") in JSON.
type Duration time.Duration

// MarshalText writes the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Serve serves h on addr until ctx is done, then shuts the server down
// gracefully (bounded by ShutdownTimeout). ready is called with the bound
// address once the listener is open. It serves h open: Flags.Serve adds
// the -http-token-file guard.
func Serve(ctx context.Context, log *slog.Logger, addr string, h http.Handler, ready func(addr string)) error {
	return serve(ctx, log, addr, nil, h, ready)
}

// Serve is Serve on the -http address, every request behind the
// -http-token-file token when one is given (401 otherwise). Without a
// token, an -http address other hosts can reach is refused unless
// -http-insecure, which then warns.
func (f *Flags) Serve(ctx context.Context, log *slog.Logger, h http.Handler, ready func(addr string)) error {
	g := &transport.HTTPGuard{Realm: "replmesh"}
	if f.HTTPTokenFile != "" {
		tok, err := transport.LoadHTTPToken(f.HTTPTokenFile, 0, log)
		if err != nil {
			return err
		}
		g.Token = tok
	}
	if err := g.CheckBind(f.HTTP, f.HTTPInsecure); err != nil {
		return fmt.Errorf("-http: %w (for HTTP: -http-token-file, or -http-insecure)", err)
	}
	if !g.Secured() && len(transport.NonLoopback([]string{f.HTTP})) > 0 {
		log.Warn("insecure mode: HTTP serves the API and /metrics without authentication on an address other hosts can reach (-http-insecure)", "http", f.HTTP)
	}
	return serve(ctx, log, f.HTTP, g, h, ready)
}

// serve is Serve with h behind g (nil: open).
func serve(ctx context.Context, log *slog.Logger, addr string, g *transport.HTTPGuard, h http.Handler, ready func(addr string)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("http listen %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           g.Handler(h),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	ready(ln.Addr().String())
	select {
	case <-ctx.Done():
		log.Info("stopping", "reason", "signal")
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown timed out; closing connections", "err", err)
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	return nil
}

// ShutdownTimeout bounds the HTTP server's graceful stop.
const ShutdownTimeout = 5 * time.Second
