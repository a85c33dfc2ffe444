package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// Results of one instance in a verifyReport.
const (
	resReference    = "reference"     // the primary: what the others are compared with
	resEqual        = "equal"         // same log, same seq, same digest as the primary
	resDiffers      = "differs"       // same log and seq, another digest: a real difference
	resOtherHistory = "other-history" // another log id than the primary's
	resUnverified   = "unverified"    // never at the primary's seq while verify ran
	resUnreachable  = "unreachable"   // its Digest failed
	resCaughtUp     = "caught-up"     // consumer: applied seq at or past the primary's
	resBehind       = "behind"        // consumer: applied seq before the primary's
	resDiverged     = "diverged"      // consumer: its replica reports a diverged history
)

// verifyReport is the JSON form of "verify".
type verifyReport struct {
	Service string `json:"service"`
	Table   string `json:"table"`
	Primary string `json:"primary"`
	LogID   string `json:"log_id"`
	Seq     uint64 `json:"seq"` // the primary's seq at its last digest
	Rows    uint64 `json:"rows"`
	Hash    string `json:"hash"` // hex
	// OK: every owner instance equals the primary at an equal seq and no
	// consumer reports a diverged replica.
	OK        bool             `json:"ok"`
	Rounds    int              `json:"rounds"`
	Instances []verifyInstance `json:"instances"`
}

// verifyInstance is one instance of a verifyReport. Owner instances
// (primary, standbys) are compared by digest; consumers, whose replicas
// serve no Digest over the network, by the applied seq they report to the
// broker.
type verifyInstance struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Role     string `json:"role"`
	Addr     string `json:"addr,omitempty"`
	LogID    string `json:"log_id,omitempty"`
	Seq      uint64 `json:"seq"`
	Rows     uint64 `json:"rows,omitempty"`
	Hash     string `json:"hash,omitempty"`
	Result   string `json:"result"`
	Detail   string `json:"detail,omitempty"`
	State    string `json:"state,omitempty"` // consumers: the replica's state
}

func (v *verifyInstance) failed() bool {
	switch v.Result {
	case resDiffers, resOtherHistory, resUnverified, resUnreachable, resDiverged:
		return true
	}
	return false
}

func (c *cli) verify(ctx context.Context, args []string) error {
	fs := c.cmdFlags("verify", "SERVICE/TABLE")
	wait := fs.Duration("wait", 10*time.Second, "how long to wait for standbys to reach the primary's seq and consumers to catch up")
	showProgress := fs.Bool("progress", isTerminal(c.stderr), "show progress on stderr (default: when stderr is a terminal)")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("verify: want SERVICE/TABLE, got %d arguments", len(pos))
	}
	if *wait < 0 {
		return usagef("verify: -wait must be >= 0")
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	p := startProgress(c.stderr, *showProgress, "verify "+service+"/"+table)
	rep, err := c.runVerify(ctx, service, table, *wait, p)
	p.end()
	if err != nil {
		return err
	}
	if c.output == "json" {
		if err := writeJSON(c.stdout, rep); err != nil {
			return err
		}
	} else {
		printVerify(c.stdout, rep)
	}
	if !rep.OK {
		var bad []string
		for _, in := range rep.Instances {
			if in.failed() {
				bad = append(bad, fmt.Sprintf("%s/%s %s", in.Service, in.Instance, in.Result))
			}
		}
		return checkFailed(fmt.Errorf("verify %s/%s: %s (the primary %s is at seq %d)", service, table, strings.Join(bad, ", "), rep.Primary, rep.Seq))
	}
	return nil
}

func (c *cli) runVerify(ctx context.Context, service, table string, wait time.Duration, p *progress) (*verifyReport, error) {
	deadline := time.Now().Add(wait)
	settled := map[string]verifyInstance{} // standbys compared at an equal seq
	var target uint64                      // the primary's seq in the first round: consumers must reach it
	for round := 1; ; round++ {
		p.set("looking up the primary")
		owner, err := c.primaryOf(ctx, service)
		if err != nil {
			return nil, err
		}
		eps := []transport.Endpoint{owner.Primary}
		for _, sb := range owner.Standbys {
			if _, ok := settled[sb.Instance]; !ok {
				eps = append(eps, sb)
			}
		}
		p.set(fmt.Sprintf("round %d: digest of %s", round, endpointNames(eps)))
		digests, errs := c.digestAll(ctx, table, eps)
		if errs[0] != nil {
			return nil, c.ownerError(service, table, owner.Primary, errs[0])
		}
		pd := digests[0]
		if round == 1 {
			target = pd.Seq
		}
		rep := &verifyReport{Service: service, Table: table, Primary: owner.Primary.Instance, LogID: pd.LogID,
			Seq: pd.Seq, Rows: pd.Rows, Hash: hex.EncodeToString(pd.Hash), Rounds: round}
		rep.Instances = append(rep.Instances, verifyInstance{Service: service, Instance: owner.Primary.Instance,
			Role: transport.RolePrimary, Addr: owner.Primary.Addr, LogID: pd.LogID, Seq: pd.Seq, Rows: pd.Rows,
			Hash: rep.Hash, Result: resReference})
		var waiting []string
		thisRound := map[string]verifyInstance{}
		for i, ep := range eps[1:] {
			d, err := digests[i+1], errs[i+1]
			vi := verifyInstance{Service: service, Instance: ep.Instance, Role: transport.RoleStandby, Addr: ep.Addr}
			switch {
			case err != nil:
				vi.Result, vi.Detail = resUnreachable, err.Error()
				waiting = append(waiting, ep.Instance+" (unreachable)")
			case d.LogID != pd.LogID:
				vi.LogID, vi.Seq, vi.Rows, vi.Hash = d.LogID, d.Seq, d.Rows, hex.EncodeToString(d.Hash)
				vi.Result, vi.Detail = resOtherHistory, fmt.Sprintf("log %s, the primary's is %s", d.LogID, pd.LogID)
				waiting = append(waiting, ep.Instance+" (other log)")
			case d.Seq == pd.Seq:
				vi.LogID, vi.Seq, vi.Rows, vi.Hash = d.LogID, d.Seq, d.Rows, hex.EncodeToString(d.Hash)
				vi.Result = resEqual
				if d.Rows != pd.Rows || !bytes.Equal(d.Hash, pd.Hash) {
					vi.Result, vi.Detail = resDiffers, fmt.Sprintf("%d rows, the primary has %d", d.Rows, pd.Rows)
				}
				settled[ep.Instance] = vi
			default:
				vi.LogID, vi.Seq, vi.Rows, vi.Hash = d.LogID, d.Seq, d.Rows, hex.EncodeToString(d.Hash)
				vi.Result, vi.Detail = resUnverified, fmt.Sprintf("at seq %d, never at the primary's seq", d.Seq)
				waiting = append(waiting, fmt.Sprintf("%s (seq %d)", ep.Instance, d.Seq))
			}
			thisRound[ep.Instance] = vi
		}
		for _, sb := range owner.Standbys {
			if vi, ok := settled[sb.Instance]; ok {
				rep.Instances = append(rep.Instances, vi)
			} else if vi, ok := thisRound[sb.Instance]; ok {
				rep.Instances = append(rep.Instances, vi)
			}
		}

		st, err := c.brokerStatus(ctx)
		if err != nil {
			return nil, err
		}
		for _, in := range st.Instances {
			for _, s := range in.Subscriptions {
				if s.Service != service || s.Table != table {
					continue
				}
				vi := verifyInstance{Service: in.Service, Instance: in.Instance, Role: transport.RoleConsumer, Seq: s.Seq, State: s.State}
				switch {
				case s.State == resDiverged:
					vi.Result, vi.Detail = resDiverged, "the replica holds a history the owner does not"
				case s.Seq >= target:
					vi.Result = resCaughtUp
				default:
					vi.Result, vi.Detail = resBehind, fmt.Sprintf("%d behind seq %d", target-s.Seq, target)
					waiting = append(waiting, fmt.Sprintf("%s/%s (seq %d)", in.Service, in.Instance, s.Seq))
				}
				rep.Instances = append(rep.Instances, vi)
			}
		}

		if len(waiting) == 0 || !time.Now().Before(deadline) {
			rep.OK = true
			for _, in := range rep.Instances {
				if in.failed() {
					rep.OK = false
				}
			}
			return rep, nil
		}
		p.set(fmt.Sprintf("round %d: primary %s at seq %d; waiting for %s", round, owner.Primary.Instance, pd.Seq, strings.Join(waiting, ", ")))
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

// digestAll asks every endpoint for the table's digest, concurrently.
func (c *cli) digestAll(ctx context.Context, table string, eps []transport.Endpoint) ([]*transport.DigestResponse, []error) {
	out := make([]*transport.DigestResponse, len(eps))
	errs := make([]error, len(eps))
	conns := make([]*conn, len(eps))
	for i, ep := range eps {
		conns[i], errs[i] = c.dial(ep.Addr)
	}
	var wg sync.WaitGroup
	for i := range eps {
		if errs[i] != nil {
			continue
		}
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, c.timeout)
			defer cancel()
			out[i], errs[i] = conns[i].repl.Digest(cctx, &transport.DigestRequest{Version: transport.ProtocolVersion, Table: table, Service: c.service})
		})
	}
	wg.Wait()
	return out, errs
}

func endpointNames(eps []transport.Endpoint) string {
	names := make([]string, len(eps))
	for i, ep := range eps {
		names[i] = ep.Instance
	}
	return strings.Join(names, ", ")
}

func printVerify(w io.Writer, rep *verifyReport) {
	textf(w, "verify %s/%s: primary %s at seq %d (log %s, %d rows)\n", rep.Service, rep.Table, rep.Primary, rep.Seq, rep.LogID, rep.Rows)
	t := newTable(w, "INSTANCE", "ROLE", "SEQ", "ROWS", "HASH", "RESULT")
	for _, in := range rep.Instances {
		rows, hash := "", ""
		if in.Role != transport.RoleConsumer {
			rows = u64(in.Rows)
			hash = in.Hash
			if len(hash) > 16 {
				hash = hash[:16]
			}
		}
		res := in.Result
		if in.State != "" && in.Result != resDiverged {
			res += " (" + in.State + ")"
		}
		if in.Detail != "" {
			res += ": " + in.Detail
		}
		t.row(in.Service+"/"+in.Instance, in.Role, u64(in.Seq), rows, hash, res)
	}
	t.flush()
	if rep.OK {
		textf(w, "OK: every owner instance holds the primary's table\n")
	} else {
		textf(w, "FAILED\n")
	}
}

// progress is a one-line display on stderr, redrawn with \r while a long
// operation runs. Disabled, it does nothing.
type progress struct {
	w     io.Writer
	label string
	start time.Time

	mu      sync.Mutex
	msg     string
	lastLen int

	stop chan struct{}
	done chan struct{}
}

func startProgress(w io.Writer, on bool, label string) *progress {
	p := &progress{w: w, label: label, start: time.Now()}
	if !on {
		return p
	}
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		tk := time.NewTicker(200 * time.Millisecond)
		defer tk.Stop()
		for {
			p.draw()
			select {
			case <-tk.C:
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

// set changes the message shown.
func (p *progress) set(msg string) {
	p.mu.Lock()
	p.msg = msg
	p.mu.Unlock()
}

func (p *progress) draw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := escape(fmt.Sprintf("%s [%s] %s", p.label, duration(time.Since(p.start)), p.msg))
	pad := ""
	if n := p.lastLen - len(line); n > 0 {
		pad = strings.Repeat(" ", n)
	}
	textf(p.w, "\r%s%s", line, pad)
	p.lastLen = len(line)
}

// end stops the display and clears its line.
func (p *progress) end() {
	if p.stop == nil {
		return
	}
	close(p.stop)
	<-p.done
	p.draw()
	p.mu.Lock()
	textf(p.w, "\r%s\r", strings.Repeat(" ", p.lastLen))
	p.mu.Unlock()
}
