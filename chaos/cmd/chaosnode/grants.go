package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/replmesh/replmesh/chaos"
)

// The grant history the harness checks for linearizability (chaos
// grants.go) is written by the processes themselves, to files that
// survive a SIGKILL (one write a line; no fsync needed, the kernel keeps
// them):
//
//   - an owner logs when it starts and every change of its role and epoch
//     (the grants it observes: chaos.RecGrantStart, chaos.RecGrantRole);
//   - a broker reads its registry every grantReadEvery and logs the
//     service's primary and epoch with the times around the read and the
//     age of its newest quorum confirmation (chaos.RecGrantRead).

// grantPoll is how often an owner looks at its role.
const grantPoll = 2 * time.Millisecond

// grantReadEvery is how often a broker reads its registry.
const grantReadEvery = 20 * time.Millisecond

// grantLog appends records to a file from one goroutine it owns.
type grantLog struct {
	f    *os.File
	stop chan struct{}
	wg   sync.WaitGroup
}

func openGrantLog(path string) (*grantLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	return &grantLog{f: f, stop: make(chan struct{})}, nil
}

func (g *grantLog) write(format string, args ...any) {
	if _, err := fmt.Fprintf(g.f, format+"\n", args...); err != nil {
		fatal("grant log: %v", err)
	}
}

// run calls fn every d until close.
func (g *grantLog) run(d time.Duration, fn func()) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			fn()
			select {
			case <-t.C:
			case <-g.stop:
				return
			}
		}
	}()
}

func (g *grantLog) close() {
	if g == nil {
		return
	}
	close(g.stop)
	g.wg.Wait()
	_ = g.f.Close()
}

// startGrantLog opens the grant log at path and logs the owner's start (before it opens: no grant to it in
// this run can be decided earlier).
func (n *node) startGrantLog(path string) error {
	g, err := openGrantLog(path)
	if err != nil {
		return err
	}
	g.write("%s %d %d", chaos.RecGrantStart, time.Now().UnixNano(), os.Getpid())
	n.grants = g
	return nil
}

// watchRole logs every change of the owner's role or epoch, with the
// time it saw it.
func (n *node) watchRole() {
	var last string
	var lastEpoch uint64
	n.grants.run(grantPoll, func() {
		role, epoch := n.comp.Role()
		if role == last && epoch == lastEpoch {
			return
		}
		last, lastEpoch = role, epoch
		if role == "" {
			role = "-"
		}
		n.grants.write("%s %d %s %d %s", chaos.RecGrantRole, time.Now().UnixNano(), role, epoch, n.addr)
	})
}

// readRegistry logs, every grantReadEvery, what this broker's registry
// says of the service's primary, between the times before and after the
// read, with the age of the broker's newest quorum confirmation (-1:
// none) and its raft state.
func (n *node) readRegistry() {
	n.grants.run(grantReadEvery, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		call := time.Now().UnixNano()
		st, err := n.brk.Status(ctx, brokerStatusRequest())
		ret := time.Now().UnixNano()
		if err != nil || st.Raft == nil {
			return
		}
		for _, o := range st.Owners {
			if o.Service != n.svc {
				continue
			}
			inst, addr := o.Primary.Instance, o.Primary.Addr
			if inst == "" {
				inst = "-"
			}
			if addr == "" {
				addr = "-"
			}
			n.grants.write("%s %d %d %d %s %d %s %s", chaos.RecGrantRead, call, ret, st.Raft.ConfirmedMs, st.Raft.State, o.Epoch, inst, addr)
		}
	})
}
