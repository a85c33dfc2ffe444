package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/replica"
	"google.golang.org/grpc"
)

// consumer follows the owner service's table through the brokers, logs
// every event of its replica to the apply log, and reads the replica all
// the time, checking each read.
type consumer struct {
	comp *replica.Component
	r    *replica.Replica

	logMu    sync.Mutex
	logf     *os.File
	skipTo   uint64 // events up to this seq were applied before the log began
	skipping bool
	logErr   error

	reads     atomic.Uint64
	violMu    sync.Mutex
	viol      []string
	violCount int

	stopCh chan struct{}
	wg     sync.WaitGroup
}

func (n *node) startConsumer(ctx context.Context, listen, dir string, brokers []string, service, table, applyLog string, frames chaos.FrameFault) error {
	cfg := replica.LocalConfig("products", n.name)
	// A pure consumer serves nothing, unless it is given an address: then
	// its replica may serve a restore of the owner (owner-disk-loss).
	cfg.ListenAddr = listen
	cfg.DataDir, cfg.Durability = dataDir(dir), replica.Sync
	cfg.Brokers = brokers
	cfg.MemTableSize, cfg.BlockCacheSize = 8<<20, 1<<20
	cfg.MaxGroupBytes, cfg.MaxApplyBytes = 256<<10, 256<<10
	cfg.Logger = n.log
	cfg.TLS, cfg.Insecure = n.sec.tls, n.sec.insecure
	n.frames = &frameFaults{}
	n.frames.set(frames) // from the first frame: a full transfer under the fault
	cfg.Transport.DialOptions = append(cfg.Transport.DialOptions, grpc.WithChainStreamInterceptor(n.frames.intercept))
	c, err := replica.Open(ctx, cfg)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(applyLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		_ = c.Close()
		return err
	}
	r, err := c.Subscribe(ctx, replica.SubscribeOptions{Service: service, Table: table})
	if err != nil {
		_ = f.Close()
		_ = c.Close()
		return err
	}
	cs := &consumer{comp: c, r: r, logf: f, stopCh: make(chan struct{})}
	// The start record is the durable cursor as loaded; events the replica
	// applied before the callback was registered are not logged (and the
	// checker accepts the jump to the start record's seq).
	cs.logMu.Lock()
	r.OnChange(cs.onChange)
	st := r.Status()
	cs.skipTo, cs.skipping = st.Seq, true
	cs.writeLog(fmt.Sprintf("%s %d %d\n", chaos.RecStart, st.Seq, st.Epoch))
	cs.logMu.Unlock()
	n.comp, n.cons, n.addr = c, cs, c.Addr()
	cs.wg.Add(1)
	go cs.reader()
	return nil
}

// writeLog appends one record (whole lines) in one write call, so a
// SIGKILL leaves whole records behind (at most the last one cut short).
func (cs *consumer) writeLog(s string) {
	if cs.logErr != nil {
		return
	}
	if _, err := cs.logf.WriteString(s); err != nil {
		cs.logErr = err
	}
}

// onChange logs one event: called in commit order after the batch is
// durable.
func (cs *consumer) onChange(e replica.Event) {
	cs.logMu.Lock()
	defer cs.logMu.Unlock()
	if cs.skipping {
		if !e.Reset && e.Seq <= cs.skipTo {
			return
		}
		cs.skipping = false
	}
	var b strings.Builder
	if e.Reset {
		fmt.Fprintf(&b, "%s %d %d\n", chaos.RecReset, e.Seq, cs.r.Status().Epoch)
	}
	for _, ch := range e.Changes {
		end, op := 0, "p"
		if ch.TxnEnd {
			end = 1
		}
		if ch.Op == replica.OpDelete {
			op = "d"
		}
		fmt.Fprintf(&b, "%s %d %d %d %s %s\n", chaos.RecChange, ch.Seq, ch.Epoch, end, op, ch.Key)
	}
	if !e.Reset {
		fmt.Fprintf(&b, "%s %d %d\n", chaos.RecEnd, e.Seq, time.Now().UnixNano())
	}
	cs.writeLog(b.String())
}

func (cs *consumer) ready() bool {
	select {
	case <-cs.r.Ready():
		return true
	default:
		return false
	}
}

// violation records something a read saw that a consistent replica never
// shows.
// It also goes to the apply log (RecViolation), which outlives a SIGKILL.
func (cs *consumer) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	cs.violMu.Lock()
	cs.violCount++
	if len(cs.viol) < 20 {
		cs.viol = append(cs.viol, msg)
	}
	cs.violMu.Unlock()
	cs.logMu.Lock()
	cs.writeLog(chaos.RecViolation + " " + strings.ReplaceAll(msg, "\n", " ") + "\n")
	cs.logMu.Unlock()
}

// reader reads the whole replica every few milliseconds, the way an
// application would, and checks each read:
//   - before the replica is Ready, a read sees nothing;
//   - a read that sees rows sees both sentinels ("!first" and "~last",
//     written together in the table's first commit group): a copy cut
//     short in key order lacks the last one;
//   - every group "g/<w>/<n>/<i>" written by one Apply has its 3 rows;
//   - while a full transfer runs, reads return the copy the replica had
//     (the cursor's seq), never the rows arriving;
//   - reads never go back in seq, except across a full transfer.
func (cs *consumer) reader() {
	defer cs.wg.Done()
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	var lastSeq, lastTransfers uint64
	for {
		select {
		case <-tk.C:
		case <-cs.stopCh:
			return
		}
		before := cs.r.Status()
		groups := map[string]int{}
		rows, first, last := 0, false, false
		seq, err := cs.r.Scan(nil, func(k, _ []byte) bool {
			rows++
			switch {
			case bytes.Equal(k, []byte(chaos.FirstKey)):
				first = true
			case bytes.Equal(k, []byte(chaos.LastKey)):
				last = true
			case bytes.HasPrefix(k, []byte(chaos.GroupPrefix)):
				if i := bytes.LastIndexByte(k, '/'); i > 0 {
					groups[string(k[:i])]++
				}
			}
			return true
		})
		if err != nil {
			continue // closing
		}
		after := cs.r.Status()
		ready := cs.ready()
		cs.reads.Add(1)
		if !ready && (rows > 0 || seq > 0) {
			cs.violation("read before Ready saw %d rows at seq %d", rows, seq)
		}
		if rows > 0 && (!first || !last) {
			cs.violation("read at seq %d saw %d rows without both sentinels (first %v, last %v)", seq, rows, first, last)
		}
		for g, n := range groups {
			if n != chaos.GroupSize {
				cs.violation("read at seq %d saw %d of the %d rows of group %s", seq, n, chaos.GroupSize, g)
				break
			}
		}
		if before.State == replica.StateTransferring && after.State == replica.StateTransferring &&
			before.Stats.FullTransfers == after.Stats.FullTransfers {
			if seq != before.Seq {
				cs.violation("read during a full transfer at seq %d, the replica's copy is at %d", seq, before.Seq)
			}
			cs.logMu.Lock()
			cs.writeLog(fmt.Sprintf("%s %d %d\n", chaos.RecTransferRead, seq, rows))
			cs.logMu.Unlock()
		}
		if seq < lastSeq && after.Stats.FullTransfers == lastTransfers {
			cs.violation("read at seq %d after a read at seq %d with no full transfer between", seq, lastSeq)
		}
		// The count before the read: a read that overlapped a transfer's
		// switch may have seen the copy before it while the count after
		// it includes it; only a count both reads agree on rules a
		// transfer out (restores make such a transfer go back in seq).
		lastSeq, lastTransfers = seq, before.Stats.FullTransfers
	}
}

func (cs *consumer) status() *chaos.ReplicaStatus {
	st := cs.r.Status()
	rs := &chaos.ReplicaStatus{
		State: st.State.String(), Ready: cs.ready(), LogID: st.LogID, Epoch: st.Epoch, Seq: st.Seq, OwnerHead: st.OwnerHead,
		FullTransfers: st.Stats.FullTransfers, Resumes: st.Stats.Resumes, Reconnects: st.Stats.Reconnects,
		Applied: st.Stats.Applied, Duplicates: st.Stats.Duplicates, Truncations: st.Stats.Truncations,
		Reads: cs.reads.Load(),
	}
	if st.LastErr != nil {
		rs.LastErr = st.LastErr.Error()
	}
	cs.violMu.Lock()
	rs.ReadViolations = append([]string(nil), cs.viol...)
	if cs.violCount > len(cs.viol) {
		rs.ReadViolations = append(rs.ReadViolations, fmt.Sprintf("... %d more", cs.violCount-len(cs.viol)))
	}
	cs.violMu.Unlock()
	cs.logMu.Lock()
	if cs.logErr != nil {
		rs.ReadViolations = append(rs.ReadViolations, "apply log: "+cs.logErr.Error())
	}
	cs.logMu.Unlock()
	return rs
}

func (cs *consumer) handle(req *chaos.Request) chaos.Response {
	switch req.Op {
	case chaos.OpDigest:
		d, err := cs.r.Digest(nil, nil)
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{Digest: &chaos.Digest{LogID: d.LogID, Seq: d.Seq, Rows: d.Rows, Hash: d.Hash}}
	case chaos.OpDump:
		var rows []chaos.Row
		_, err := cs.r.Scan(nil, func(k, v []byte) bool {
			rows = append(rows, chaos.Row{Key: string(k), Value: append([]byte(nil), v...)})
			return true
		})
		if err != nil {
			return chaos.Response{Err: err.Error()}
		}
		return chaos.Response{Rows: rows}
	case chaos.OpRead:
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ready, state := cs.ready(), cs.r.Status().State.String()
		v, ok, err := cs.r.Read(ctx, []byte(req.Key), replica.Cached)
		if err != nil {
			return chaos.Response{Err: err.Error(), Ready: ready, State: state}
		}
		return chaos.Response{Value: v, Found: ok, Ready: ready, State: state}
	}
	return chaos.Response{Err: fmt.Sprintf("op %q is not served by a consumer", req.Op)}
}

func (cs *consumer) stop() {
	close(cs.stopCh)
	cs.wg.Wait()
	cs.logMu.Lock()
	_ = cs.logf.Close()
	cs.logMu.Unlock()
}
