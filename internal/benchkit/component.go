package benchkit

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/replmesh/replmesh/replica"
)

// Config returns production defaults (replica.DefaultConfig) with async
// durability, as the benchmarks run every component: dir "" is in memory,
// listen "" serves nothing.
func Config(logger *slog.Logger, service, instance, dir, listen string) replica.Config {
	cfg := replica.DefaultConfig()
	cfg.Service, cfg.Instance = service, instance
	cfg.ListenAddr = listen
	cfg.DataDir = dir
	cfg.Durability = replica.Async
	cfg.Logger = logger
	return cfg
}

// WaitReady waits, for at most timeout (a setup wait, not measured),
// until r holds a complete copy.
func WaitReady(ctx context.Context, r *replica.Replica, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	select {
	case <-r.Ready():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("replica not ready: %w (status %+v)", ctx.Err(), r.Status())
	}
}
