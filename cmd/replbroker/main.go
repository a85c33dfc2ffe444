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
// Configuration comes from flags and/or a YAML file (-config FILE; unknown
// keys are an error naming the line; flags given on the command line win).
// -print-config prints a commented file with every key.
//
//	replbroker                                   # one node on localhost
//	replbroker -name b2 -grpc 10.0.0.2:7400 -gossip 10.0.0.2:7401 -join 10.0.0.1:7401
//	replbroker -config /etc/replmesh/broker.yaml
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
	"net"
	"net/http"
	"os"
	"os/signal"
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
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) || errors.Is(err, errPrinted) {
			return
		}
		fmt.Fprintf(os.Stderr, "replbroker: %v\n", err)
		os.Exit(1)
	}
}

// run starts the broker and serves until ctx is done.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, httpAddr, log, modeFile, err := parseArgsModes(args, stderr)
	if err != nil {
		return err
	}
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
	if httpAddr != "" {
		lis, err := net.Listen("tcp", httpAddr)
		if err != nil {
			b.Close()
			return fmt.Errorf("http listen %s: %w", httpAddr, err)
		}
		boundHTTP = lis.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("GET /api/status", statusJSON(b))
		mux.HandleFunc("GET /{$}", statusPage(b))
		srv = &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		go func() { httpErr <- srv.Serve(lis) }()
	}
	log.Info("replbroker serving", "name", b.Name(), "grpc", b.GRPCAddr(), "gossip", b.GossipAddr(), "http", boundHTTP,
		"join", cfg.Join, "lease", cfg.Lease.String())

	select {
	case <-ctx.Done():
		log.Info("replbroker stopping", "reason", "signal")
	case err := <-httpErr:
		log.Error("http server failed", "err", err)
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

// applyModeFile sets every table mode of the -modes file as a broker
// override (the top of the precedence: override > subscription option >
// owner default). Brokers of a cluster started with the same file agree.
func applyModeFile(ctx context.Context, b *broker.Broker, mf *modes.Config) error {
	if mf == nil {
		return nil
	}
	for name, tc := range mf.Tables {
		if tc.Mode == modes.Unset {
			continue
		}
		svc, table, _ := strings.Cut(name, "/")
		_, err := b.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: svc, Table: table, Mode: tc.Mode.String()})
		if err != nil {
			return fmt.Errorf("mode file: %s: %w", name, err)
		}
	}
	return nil
}
