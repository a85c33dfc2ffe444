package svc

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"log/slog"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" : no error
		isHelp  bool
	}{
		{"defaults", nil, "", false},
		{"flags", []string{"-instance", "x-2", "-brokers", "b1:1, b2:2", "-log-format", "json"}, "", false},
		{"help", []string{"-h"}, "flag: help requested", true},
		{"unknown flag", []string{"-nope"}, "flag provided but not defined: -nope", false},
		{"an argument after the flags", []string{"-instance", "x-2", "extra"}, "unexpected arguments: [extra]", false},
		{"bad log level", []string{"-log-level", "loud"}, `-log-level "loud": want debug, info, warn or error`, false},
		{"no broker", []string{"-brokers", " , "}, "-brokers: at least one broker address is needed", false},
		{"bad durability", []string{"-durability", "maybe"}, `-durability "maybe": want sync or async`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			f, log, cfg, err := Parse("x", "x-1", "127.0.0.1:0", tt.args, &stderr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) = %v, want an error with %q", tt.args, err, tt.wantErr)
				}
				if got := errors.Is(err, flag.ErrHelp); got != tt.isHelp {
					t.Errorf("Parse(%q) error is flag.ErrHelp: %v, want %v", tt.args, got, tt.isHelp)
				}
				if f != nil || log != nil {
					t.Errorf("Parse(%q) returned flags or a logger with its error", tt.args)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.args, err)
			}
			if f == nil || log == nil {
				t.Fatalf("Parse(%q) returned no flags or no logger", tt.args)
			}
			if cfg.Service != "x" || cfg.Instance != f.Instance || !cfg.Owner || cfg.Logger != log {
				t.Errorf("config %+v does not follow the flags %+v", cfg, f)
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr: %q, want nothing", stderr.String())
			}
		})
	}
}

// closer is a service whose Close fails with err and is counted.
type closer struct {
	err    error
	closed int
}

func (c *closer) Close() error { c.closed++; return c.err }

func TestRun(t *testing.T) {
	errOpen, errServe, errClose := errors.New("open failed"), errors.New("serve failed"), errors.New("close failed")
	tests := []struct {
		name              string
		openErr, serveErr error
		closeErr          error
		wantErr           error
		wantLog           []string // in this order
	}{
		{"served and closed", nil, nil, nil, nil, []string{"level=INFO msg=stopped"}},
		{"serve fails", nil, errServe, nil, errServe, []string{"level=INFO msg=stopped"}},
		{"close fails", nil, nil, errClose, nil, []string{`level=ERROR msg=close err="close failed"`, "level=INFO msg=stopped"}},
		{"open fails", errOpen, nil, nil, errOpen, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				},
			}))
			s := &closer{err: tt.closeErr}
			served := 0
			open := func(ctx context.Context) (*closer, error) {
				if _, ok := ctx.Deadline(); !ok {
					t.Errorf("open's context has no deadline")
				}
				return s, tt.openErr
			}
			err := Run(context.Background(), log, open, func(got *closer) error {
				served++
				if got != s {
					t.Errorf("serve got %p, want the opened %p", got, s)
				}
				if s.closed != 0 {
					t.Errorf("closed before serve returned")
				}
				return tt.serveErr
			})
			if !errors.Is(err, tt.wantErr) || (err == nil) != (tt.wantErr == nil) {
				t.Fatalf("Run = %v, want %v", err, tt.wantErr)
			}
			wantCalls := 1
			if tt.openErr != nil {
				wantCalls = 0
			}
			if served != wantCalls || s.closed != wantCalls {
				t.Errorf("served %d times, closed %d times; want %d each", served, s.closed, wantCalls)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if l != "" {
					got = append(got, l)
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.wantLog, "\n") {
				t.Errorf("log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.wantLog, "\n"))
			}
		})
	}
}
