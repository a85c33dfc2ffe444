// Command replbroker runs one replmesh broker: the registry and discovery
// service that tells components who owns which tables and where, grants the
// primary lease of owner services and promotes standbys. Brokers form a
// cluster with memberlist (-join); components may hold their session with
// any of them.
//
// With no flags it starts a one-node broker on localhost with well-known
// ports: the Broker gRPC service on 127.0.0.1:7400 (replctl's default),
// gossip on 127.0.0.1:7401 and HTTP on 127.0.0.1:7402. HTTP serves
// Prometheus /metrics, /api/status (the Status response as JSON) and a
// status page at / (services, primaries and epochs, instances, and the lag
// of every subscription). The gRPC server also serves the standard health
// service.
//
// HTTP is plaintext and unauthenticated by default, for loopback: an -http
// address other hosts can reach is refused unless it is secured or
// -http-insecure is given (then a WARN says so on every start). Secure it
// with HTTPS and client certificates (-http-tls-cert, -http-tls-key,
// -http-tls-ca: a client presents a certificate with an admin or operator
// identity; another identity gets 403), with a bearer token
// (-http-token-file: "Authorization: Bearer TOKEN", or the token as the
// password of Basic authentication for a browser; otherwise 401), or both
// (either proves the caller). The certificates and the token file are
// re-read when they change.
//
// Configuration comes from flags and/or a YAML file (-config FILE; unknown
// keys are an error naming the line; flags given on the command line win).
// -print-config prints a commented file with every key.
//
//	replbroker                                   # one node on localhost, in memory
//	replbroker -name b1 -data-dir /var/lib/replbroker -grpc 10.0.0.1:7400 -gossip 10.0.0.1:7401
//	replbroker -name b2 -data-dir /var/lib/replbroker -grpc 10.0.0.2:7400 -gossip 10.0.0.2:7401 -join 10.0.0.1:7401
//
// The brokers decide primaries, epochs and mode overrides through Raft
// (see package broker): the first broker (no -join, empty -data-dir)
// starts a one-broker cluster; a broker with -join and an empty data dir
// asks the cluster to add it as a voter; a broker restarted with its data
// dir comes back as the member it was. Run 3 or 5 brokers, each with a
// data dir: a majority (2 of 3, 3 of 5) must be up for any decision.
// `replctl broker remove NAME` retires a broker for good.
//
//	replbroker -config /etc/replmesh/broker.yaml
//
// -modes FILE sets the table modes of a per-table mode file (the modes
// YAML) as broker overrides. On SIGHUP it reads the file again and applies
// what changed: a table added or whose mode changed gets the file's mode; a
// table removed from the file has its override cleared, unless the
// override was changed since (replctl mode set), which then stays. Each
// change is logged. A file that does not load is logged and the modes in
// force stay as they are.
//
// Security. With -tls-cert, -tls-key and -tls-ca (a CA bundle; -tls-client-ca
// is its former name) and a certificate carrying a replmesh SPIFFE ID
// (`replctl tls cert create -broker NAME`), the gRPC service is mTLS and
// every call is authorized by the caller's certificate identity
// (broker.Config.RequireIdentity): an instance registers only as itself,
// subscribes only to tables the -policy file lets its service read, SetMode
// needs an admin, Status an admin or operator. The certificates and the
// bundle are re-read when they change and on SIGHUP, as is the -policy
// file (a file that does not load leaves the one in force). Without TLS the
// broker refuses a gRPC address other hosts can reach unless -insecure is
// given, and then says so at WARN on every start.
//
// Gossip is encrypted with -gossip-key (gossip_key, gossip_keys or
// gossip_key_file), which a broker whose -gossip address is not a loopback
// address requires unless -insecure-gossip is given (then it warns at every
// start). On SIGHUP the keys are read again from the command line and the
// config file (gossip_keys, or one per line in gossip_key_file): the first
// encrypts, all decrypt. A key rotation is three reloads, each on every
// broker before the next: [old, new], then [new, old], then [new]. replctl
// gossip keys does the same through the broker's gRPC service (with -token).
//
// On SIGTERM or SIGINT it reports NOT_SERVING on health, leaves the cluster
// (the other brokers stop counting on it at once), ends its sessions (the
// components re-home to other brokers) and stops.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// At once: SIGHUP's default action ends the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	if err := run(ctx, os.Args[1:], os.Stderr, hup); err != nil {
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errPrinted) {
			return
		}
		fmt.Fprintf(os.Stderr, "replbroker: %v\n", err)
		os.Exit(1)
	}
}

// run starts the broker and serves until ctx is done, reloading the
// -modes file on every value from reload.
func run(ctx context.Context, args []string, stderr io.Writer, reload <-chan os.Signal) error {
	st, hs, err := parseSettingsHTTP(args, stderr)
	if err != nil {
		return err
	}
	cfg, log, modeFile := st.cfg, st.log, st.modes
	st.warn()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	b, err := broker.New(startCtx, cfg)
	cancel()
	if err != nil {
		return err
	}
	if err := applyModeFile(ctx, b, modeFile); err != nil {
		b.Close()
		return err
	}
	reg := b.Metrics()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	var srv *http.Server
	httpErr := make(chan error, 1)
	boundHTTP := ""
	if hs.addr != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.Handle("/", b.StatusHandler()) // the status page at / and /api/status
		var lis net.Listener
		if srv, lis, err = hs.listen(mux, log); err != nil {
			b.Close()
			return err
		}
		boundHTTP = lis.Addr().String()
		go func() { httpErr <- srv.Serve(lis) }()
	}
	log.Info("replbroker serving", "name", b.Name(), "grpc", b.GRPCAddr(), "gossip", b.GossipAddr(), "http", boundHTTP, "http_auth", hs.auth(),
		"join", cfg.Join, "lease", cfg.Lease.String())

serve:
	for {
		select {
		case <-ctx.Done():
			log.Info("replbroker stopping", "reason", "signal")
			break serve
		case err := <-httpErr:
			log.Error("http server failed", "err", err)
			break serve
		case <-reload:
			st.reload(b)
			reloadGossipKeys(b, log, args)
			if modeFile == nil {
				log.Info("SIGHUP: no -modes file to reload")
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			modeFile = reloadModeFile(rctx, b, log, modeFile)
			cancel()
		}
	}
	// Health NOT_SERVING, leave the cluster, end sessions, stop gRPC.
	cerr := b.Close()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		cancel()
	}
	if cerr != nil {
		return cerr
	}
	log.Info("replbroker stopped")
	return nil
}

// warn logs, at every start, what leaves the gRPC service open: the
// insecure mode, mTLS whose certificates carry no identity, a policy
// that applies to no identity.
func (st *settings) warn() {
	switch {
	case st.cfg.Transport.TLS == nil && st.insecure:
		// broker.New warns about a plaintext gRPC address other hosts
		// can reach (Config.Insecure); on loopback there is nothing to say.
	case st.tlsNoID:
		st.log.Warn("the broker's certificate carries no replmesh identity (SPIFFE ID): mTLS without authorization; "+
			"issue certificates with `replctl tls cert create`", "grpc", st.cfg.GRPCAddr)
	case st.cfg.Transport.TLS != nil && !st.cfg.RequireIdentity:
		st.log.Warn("TLS without a CA bundle (-tls-ca): clients are not authenticated and no call is authorized", "grpc", st.cfg.GRPCAddr)
	}
	if st.cfg.RequireIdentity {
		tables, limits := st.cfg.Policy.Summary()
		st.log.Info("authorization on: calls are checked against the caller's certificate identity",
			"identity", st.tls.Identity().String(), "policy", st.policy, "policy_tables", tables, "policy_limits", limits)
		if st.policy == "" {
			st.log.Warn("no -policy file: every service may read only its own tables")
		}
	} else if st.policy != "" {
		st.log.Warn("the -policy file applies only with mTLS identities (-tls-cert, -tls-key, -tls-ca); only its limits apply", "policy", st.policy)
	}
}

// reload re-reads the TLS files and the -policy file (on SIGHUP); what
// does not load is logged and the material in force stays.
func (st *settings) reload(b *broker.Broker) {
	if st.tls != nil {
		_ = st.tls.Reload() // logged by the source
	}
	if st.policy == "" {
		return
	}
	p, err := modes.LoadAccessPolicy(st.policy)
	if err != nil {
		st.log.Error("policy file not reloaded; the policy in force stays", "file", st.policy, "err", err)
		return
	}
	b.SetPolicy(p)
	tables, limits := p.Summary()
	st.log.Info("policy file reloaded", "file", st.policy, "tables", tables, "limits", limits)
}

// reloadGossipKeys reads the gossip keys from the command line and the
// config file again and makes them the broker's keyring: the first key
// encrypts, every key listed decrypts, keys no longer listed are removed.
// Settings that do not load, or that would turn encryption on or off (a
// restart does that), change nothing and are logged.
func reloadGossipKeys(b *broker.Broker, log *slog.Logger, args []string) {
	running := b.ListGossipKeys() != nil
	st, err := parseSettings(args, io.Discard)
	switch {
	case err != nil:
		if running {
			log.Error("gossip keys not reloaded; the keys in force stay", "err", err)
		}
		return
	}
	cfg := st.cfg
	switch {
	case len(cfg.GossipKey) == 0 && !running:
		return // no encryption before or after: nothing to say
	case len(cfg.GossipKey) == 0:
		log.Error("gossip keys not reloaded: the settings give no gossip key; gossip stays encrypted with the keys in force (turning encryption off needs a restart)")
		return
	case !running:
		log.Error("gossip keys not reloaded: this broker started without a gossip key; restart every broker with the key to encrypt gossip")
		return
	}
	keys := append([][]byte{cfg.GossipKey}, cfg.GossipKeys...)
	changed, err := b.SetGossipKeys(keys)
	if err != nil {
		log.Error("gossip keys not reloaded; the keys in force stay", "err", err)
		return
	}
	var fps []string
	for _, k := range b.ListGossipKeys() {
		fps = append(fps, broker.GossipKeyFingerprint(k))
	}
	if !changed {
		log.Info("gossip keys reloaded: nothing changed", "keys", fps)
		return
	}
	log.Info("gossip keys reloaded", "primary", fps[0], "keys", fps)
}

// applyModeFile sets every table mode of the -modes file as a broker
// override (the top of the precedence: override > subscription option >
// owner default). Brokers of a cluster started with the same file agree.
func applyModeFile(ctx context.Context, b *broker.Broker, mf *modeFile) error {
	if mf == nil {
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(mf.modes)) {
		if err := setOverride(ctx, b, name, mf.modes[name].String()); err != nil {
			return fmt.Errorf("mode file: %s: %w", name, err)
		}
	}
	return nil
}

// setOverride sets the broker override of table ("service/table") to mode,
// or clears it when mode is "".
func setOverride(ctx context.Context, b *broker.Broker, table, mode string) error {
	svc, tbl, _ := strings.Cut(table, "/")
	_, err := b.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: svc, Table: tbl, Mode: mode})
	return err
}

// modeChange is one difference between two loads of the -modes file.
type modeChange struct {
	table    string // "service/table"
	from, to string // the mode before and after; "" for a table not in that load
}

// diffModes lists what changed from old to new, sorted by table.
func diffModes(old, new map[string]modes.Mode) []modeChange {
	var out []modeChange
	for name, m := range new {
		if was, ok := old[name]; !ok || was != m {
			c := modeChange{table: name, to: m.String()}
			if ok {
				c.from = was.String()
			}
			out = append(out, c)
		}
	}
	for name, was := range old {
		if _, ok := new[name]; !ok {
			out = append(out, modeChange{table: name, from: was.String()})
		}
	}
	slices.SortFunc(out, func(a, b modeChange) int { return strings.Compare(a.table, b.table) })
	return out
}

// reloadModeFile reads the -modes file again and applies what changed
// since cur, logging each change; it returns what is now in force. A file
// that does not load changes nothing. A table removed from the file has
// its override cleared only if it is still the file's: one set since with
// replctl stays.
func reloadModeFile(ctx context.Context, b *broker.Broker, log *slog.Logger, cur *modeFile) *modeFile {
	next, err := loadModeFile(cur.path)
	if err != nil {
		log.Error("modes file not reloaded; the modes in force stay", "file", cur.path, "err", err)
		return cur
	}
	changes := diffModes(cur.modes, next.modes)
	if len(changes) == 0 {
		log.Info("modes file reloaded: nothing changed", "file", cur.path, "tables", len(next.modes))
		return next
	}
	st, err := b.Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		log.Error("modes file not reloaded; the modes in force stay", "file", cur.path, "err", err)
		return cur
	}
	overrides := st.Overrides
	applied := maps.Clone(cur.modes) // what is in force: the old file, as far as changes fail
	var added, removed, changed, failed int
	for _, c := range changes {
		if c.to == "" && overrides[c.table] != c.from {
			// Changed (or cleared) since the file set it: not the file's any more.
			log.Info("modes file: table removed; its override was changed since and stays",
				"table", c.table, "file_mode", c.from, "override", overrides[c.table])
			delete(applied, c.table)
			removed++
			continue
		}
		if err := setOverride(ctx, b, c.table, c.to); err != nil {
			log.Error("modes file: change not applied", "table", c.table, "from", c.from, "to", c.to, "err", err)
			failed++
			continue
		}
		switch {
		case c.to == "":
			log.Info("modes file: table removed; override cleared", "table", c.table, "mode", c.from)
			delete(applied, c.table)
			removed++
		case c.from == "":
			log.Info("modes file: table added", "table", c.table, "mode", c.to)
			applied[c.table] = next.modes[c.table]
			added++
		default:
			log.Info("modes file: mode changed", "table", c.table, "from", c.from, "to", c.to)
			applied[c.table] = next.modes[c.table]
			changed++
		}
	}
	level := slog.LevelInfo
	if failed > 0 {
		level = slog.LevelError
	}
	log.Log(ctx, level, "modes file reloaded", "file", cur.path, "added", added, "removed", removed, "changed", changed, "failed", failed)
	return &modeFile{path: cur.path, modes: applied}
}
