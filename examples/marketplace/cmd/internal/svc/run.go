package svc

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/replmesh/replmesh/replica"
)

// Main runs a service binary: run gets the process's arguments and stderr
// and a context done at SIGTERM or SIGINT. An error other than -h's
// flag.ErrHelp is printed after name and exits 1.
func Main(name string, run func(ctx context.Context, args []string, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Parse parses args as the binary of service (the flag set's name) with
// the common flags, -instance and -http defaulting to instance and
// httpAddr, and returns the flags, the logger they ask for (writing to
// stderr) and the component config of service. Usage and flag errors go to
// stderr; -h returns flag.ErrHelp, and no argument may follow the flags.
func Parse(service, instance, httpAddr string, args []string, stderr io.Writer) (*Flags, *slog.Logger, replica.Config, error) {
	fs := flag.NewFlagSet(service, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f := Register(fs, instance, httpAddr)
	if err := fs.Parse(args); err != nil {
		return nil, nil, replica.Config{}, err
	}
	if fs.NArg() > 0 {
		return nil, nil, replica.Config{}, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	log, err := f.Logger(stderr)
	if err != nil {
		return nil, nil, replica.Config{}, err
	}
	cfg, err := f.Config(service, log)
	if err != nil {
		return nil, nil, replica.Config{}, err
	}
	return f, log, cfg, nil
}

// OpenTimeout bounds the opening of a service binary's component.
const OpenTimeout = 30 * time.Second

// Run opens a service with open (its context bounded by OpenTimeout),
// hands it to serve, and closes it when serve returns: a failed close is
// logged as an error, then "stopped" at Info. It returns open's or
// serve's error.
func Run[S io.Closer](ctx context.Context, log *slog.Logger, open func(context.Context) (S, error), serve func(S) error) error {
	octx, cancel := context.WithTimeout(ctx, OpenTimeout)
	s, err := open(octx)
	cancel()
	if err != nil {
		return err
	}
	defer func() {
		if err := s.Close(); err != nil {
			log.Error("close", "err", err)
		}
		log.Info("stopped")
	}()
	return serve(s)
}
