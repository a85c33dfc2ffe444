package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/replmesh/replmesh/replica"
)

// runResume measures the time to caught up after -missed changes were
// missed, for whichever side restarted:
//
//   - consumer restart: a durable consumer holds the table and closes; the
//     owner commits -missed changes; the consumer reopens (a new component
//     on the same data dir, then Subscribe). Timed from the reopen to
//     WaitFor(owner head).
//   - owner restart: the consumer is caught up; the owner stops, and while
//     it is down its table grows by -missed changes (the owner process
//     writes them with its server off: as if the writes came just before
//     it stopped); the owner reopens on the same data dir and address.
//     Timed from the owner's Open to the consumer's WaitFor(head); this
//     includes the consumer's reconnect backoff.
func (b *bench) runResume(ctx context.Context) (err error) {
	dir, err := b.subdir("resume")
	if err != nil {
		return err
	}
	ownerDir, consDir := filepath.Join(dir, "owner"), filepath.Join(dir, "consumer")
	var owner, cons *replica.Component
	defer func() { err = errors.Join(err, closeAll(owner, cons), os.RemoveAll(dir)) }()

	missed := b.opts.missed
	owner, tbl, err := b.openOwner(ctx, ownerDir, "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := owner.Addr()
	b.progress("resume: owner loads %d rows; the consumer takes them", missed)
	head, err := b.loadRows(ctx, tbl, missed)
	if err != nil {
		return err
	}
	if cons, err = b.openConsumer(ctx, "resume", consDir); err != nil {
		return err
	}
	r, err := subscribe(ctx, cons, addr)
	if err != nil {
		return err
	}
	if err := waitCaughtUp(ctx, r, head); err != nil {
		return err
	}
	if err := cons.Close(); err != nil {
		return err
	}
	cons = nil

	// Consumer restart.
	b.progress("resume: consumer closed; owner commits %d changes", missed)
	if head, err = b.writePipelined(ctx, tbl, missed, b.opts.keys, missed); err != nil {
		return err
	}
	start := time.Now()
	if cons, err = b.openConsumer(ctx, "resume", consDir); err != nil {
		return err
	}
	opened := time.Since(start)
	if r, err = subscribe(ctx, cons, addr); err != nil {
		return err
	}
	if err := r.WaitFor(ctx, head); err != nil {
		return err
	}
	took := time.Since(start)
	st := r.Status()
	how := "resumed from the owner's log"
	if st.Stats.FullTransfers > 0 || st.Stats.Resumes == 0 {
		how = fmt.Sprintf("NOT a resume: %d full transfers, %d resumes", st.Stats.FullTransfers, st.Stats.Resumes)
	}
	b.add(result{
		Workload: "resume consumer restart", Figure: "time to caught up", Value: float64(took), Unit: unitNanos, Target: under(150e6),
		Reference: "nats 0.13 s, redis 0.16 s", payloadBps: float64(missed*b.opts.valueSize) / took.Seconds(),
		Notes: fmt.Sprintf("%d changes missed; %s; component open %s", missed, how, formatDuration(opened)),
	})

	// Owner restart.
	b.progress("resume: owner stopped; it commits %d changes while down", missed)
	if err := owner.Close(); err != nil {
		return err
	}
	owner = nil
	offline, offTbl, err := b.openOwner(ctx, ownerDir, "")
	if err != nil {
		return err
	}
	head, err = b.writePipelined(ctx, offTbl, missed, b.opts.keys, 2*missed)
	if err = errors.Join(err, offline.Close()); err != nil {
		return err
	}
	before := r.Status().Stats
	var resumedAt time.Time
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	start = time.Now()
	wg.Go(func() { // notes when the consumer's stream resumes
		for {
			if r.Status().Stats.Resumes > before.Resumes {
				resumedAt = time.Now()
				return
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	})
	owner, _, err = b.openOwner(ctx, ownerDir, addr)
	opened = time.Since(start)
	if err == nil {
		err = r.WaitFor(ctx, head)
	}
	took = time.Since(start)
	close(stopWatch)
	wg.Wait()
	if err != nil {
		return err
	}
	st = r.Status()
	how = "resumed from the owner's log"
	if st.Stats.FullTransfers > before.FullTransfers || st.Stats.Resumes == before.Resumes {
		how = fmt.Sprintf("NOT a resume: %d full transfers, %d resumes", st.Stats.FullTransfers-before.FullTransfers, st.Stats.Resumes-before.Resumes)
	}
	notes := fmt.Sprintf("%d changes missed; %s; owner open %s", missed, how, formatDuration(opened))
	if !resumedAt.IsZero() {
		notes += fmt.Sprintf(", consumer reconnected at %s (reconnect backoff), caught up %s later",
			formatDuration(resumedAt.Sub(start)), formatDuration(start.Add(took).Sub(resumedAt)))
	}
	b.add(result{
		Workload: "resume owner restart", Figure: "time to caught up", Value: float64(took), Unit: unitNanos, Target: under(150e6),
		Reference: "nats 0.13 s, redis 0.16 s", payloadBps: float64(missed*b.opts.valueSize) / took.Seconds(),
		Notes: notes,
	})
	return nil
}

// waitCaughtUp waits (not measured) until r holds seq.
func waitCaughtUp(ctx context.Context, r *replica.Replica, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	return r.WaitFor(ctx, seq)
}
