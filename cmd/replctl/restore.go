package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// restoreReport is the JSON form of "restore": the plan (every candidate
// as the owner found it, the one chosen, the histories), and once it ran
// the outcome.
type restoreReport struct {
	Service string `json:"service"`
	Table   string `json:"table"`
	Owner   string `json:"owner"` // the primary instance restored
	// Candidates are the consumers of the table the brokers list, with
	// their position as the broker last heard it and as the owner asked it.
	Candidates []restoreCandidate `json:"candidates"`
	// Source is the chosen replica; LogID, Epoch and Seq the history it
	// holds (Seq is the owner's head after the restore).
	Source        transport.RestoreSource `json:"source"`
	LogID         string                  `json:"log_id"`
	Epoch         uint64                  `json:"epoch"`
	Seq           uint64                  `json:"seq"`
	ExpectedLogID string                  `json:"expected_log_id"`
	OverrideLogID string                  `json:"override_log_id,omitempty"`
	OwnerLogID    string                  `json:"owner_log_id"`
	OwnerEpoch    uint64                  `json:"owner_epoch"`
	OwnerHead     uint64                  `json:"owner_head"`
	// Restored is false for -dry-run (and a refusal): nothing changed.
	Restored   bool    `json:"restored"`
	NewEpoch   uint64  `json:"new_epoch,omitempty"`
	Rows       uint64  `json:"rows,omitempty"`
	Bytes      uint64  `json:"bytes,omitempty"`
	Rate       float64 `json:"rows_per_sec,omitempty"`
	TransferMs int64   `json:"transfer_ms,omitempty"` // the rows' transfer
}

// restoreCandidate is one replica a restore may take the table from.
type restoreCandidate struct {
	Service  string `json:"service"`
	Instance string `json:"instance"`
	Addr     string `json:"addr"`
	// As the broker last heard it.
	BrokerLogID string `json:"broker_log_id"`
	BrokerEpoch uint64 `json:"broker_epoch"`
	BrokerSeq   uint64 `json:"broker_seq"`
	BrokerState string `json:"broker_state"`
	// As the owner asked it just now (Error when it did not answer or
	// holds no complete copy).
	LogID  string `json:"log_id"`
	Epoch  uint64 `json:"epoch"`
	Seq    uint64 `json:"seq"`
	State  string `json:"state"`
	Error  string `json:"error,omitempty"`
	Chosen bool   `json:"chosen"`
}

func (rc *restoreCandidate) source() transport.RestoreSource {
	return transport.RestoreSource{Service: rc.Service, Instance: rc.Instance, Addr: rc.Addr}
}

// restoreCandidates lists, from the broker's status, every instance that
// subscribes to service/table and serves a replication listener (a
// consumer without one cannot serve a restore), in status order.
func restoreCandidates(st *transport.StatusResponse, service, table string) []restoreCandidate {
	var out []restoreCandidate
	for _, in := range st.Instances {
		if in.Addr == "" {
			continue
		}
		for _, s := range in.Subscriptions {
			if s.Service == service && s.Table == table {
				out = append(out, restoreCandidate{Service: in.Service, Instance: in.Instance, Addr: in.Addr,
					BrokerLogID: s.LogID, BrokerEpoch: s.Epoch, BrokerSeq: s.Seq, BrokerState: s.State})
				break
			}
		}
	}
	return out
}

// pickSource resolves -from among the candidates: an instance name (when
// one service has it), SERVICE/INSTANCE, or a replication address (HOST:PORT;
// one the brokers do not list is taken as it is, its service unknown).
func pickSource(cands []restoreCandidate, from string) (transport.RestoreSource, error) {
	var match []restoreCandidate
	for _, rc := range cands {
		if rc.Instance == from || rc.Service+"/"+rc.Instance == from || rc.Addr == from {
			match = append(match, rc)
		}
	}
	switch {
	case len(match) == 1:
		return match[0].source(), nil
	case len(match) > 1:
		names := make([]string, len(match))
		for i, m := range match {
			names[i] = m.Service + "/" + m.Instance
		}
		return transport.RestoreSource{}, usagef("restore -from %q names several replicas (%s): name SERVICE/INSTANCE", from, strings.Join(names, ", "))
	case strings.Contains(from, ":") && !strings.Contains(from, "/"):
		return transport.RestoreSource{Addr: from}, nil
	}
	names := make([]string, len(cands))
	for i, rc := range cands {
		names[i] = rc.Service + "/" + rc.Instance
	}
	if len(names) == 0 {
		names = []string{"none"}
	}
	return transport.RestoreSource{}, usagef("restore -from %q: no replica of that name or address (the brokers list: %s)", from, strings.Join(names, ", "))
}

// restore runs "restore SERVICE/TABLE".
func (c *cli) restore(ctx context.Context, args []string) error {
	fs := c.cmdFlags("restore", "SERVICE/TABLE")
	from := fs.String("from", "", "restore from this replica: INSTANCE, SERVICE/INSTANCE or its replication ADDR (default: the most advanced)")
	override := fs.String("override-log-id", "", "take the source's history even though its log id is not the expected one: name that `LOG_ID`")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	dryRun := fs.Bool("dry-run", false, "show the candidates and the plan; change nothing")
	watch := fs.Bool("watch", false, "start nothing: follow the table's running (or last) restore, however it was started, until it is done or failed")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("restore: want SERVICE/TABLE, got %d arguments", len(pos))
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	if *watch {
		if *from != "" || *override != "" || *yes || *dryRun {
			return usagef("restore -watch starts nothing: it takes no -from, -override-log-id, -yes or -dry-run")
		}
		return c.watchRestore(ctx, service, table)
	}
	st, err := c.brokerStatus(ctx)
	if err != nil {
		return err
	}
	owner, cn, err := c.primaryConn(ctx, service)
	if err != nil {
		return err
	}
	rep := &restoreReport{Service: service, Table: table, Owner: owner.Primary.Instance, OverrideLogID: *override,
		Candidates: restoreCandidates(st, service, table)}
	req := &transport.RestoreRequest{Version: transport.ProtocolVersion, Table: table, LogID: *override}
	if *from != "" {
		if req.Source, err = pickSource(rep.Candidates, *from); err != nil {
			return err
		}
	}
	if len(rep.Candidates) == 0 && req.Source.Addr == "" {
		return fmt.Errorf("restore %s/%s: the brokers list no consumer of it with a replication address: nothing to restore from (name one with -from ADDR)", service, table)
	}
	for _, rc := range rep.Candidates {
		req.Candidates = append(req.Candidates, rc.source())
	}
	if len(req.Candidates) > transport.MaxRestoreCandidates {
		return fmt.Errorf("restore %s/%s: %d candidates, more than one restore asks (%d): name one with -from", service, table, len(req.Candidates), transport.MaxRestoreCandidates)
	}

	// The plan: the owner asks every candidate where it stands and
	// chooses as the restore will.
	client := cn.restore
	dry := *req
	dry.DryRun = true
	pctx, cancel := context.WithTimeout(ctx, c.timeout)
	plan, err := c.restoreCall(pctx, client, &dry, nil)
	cancel()
	if plan != nil {
		rep.setPlan(plan)
	}
	if err != nil {
		if plan != nil && c.output == "text" {
			printRestorePlan(c.stdout, rep)
		}
		return c.restoreError(service, table, owner.Primary, err)
	}
	if plan == nil {
		return fmt.Errorf("restore %s/%s: the owner %s sent no plan", service, table, owner.Primary.Instance)
	}
	if c.output == "text" {
		printRestorePlan(c.stdout, rep)
	}
	if *dryRun {
		if c.output == "json" {
			return writeJSON(c.stdout, rep)
		}
		return nil
	}
	if !*yes {
		ok, err := c.confirm(rep)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("restore %s/%s not confirmed: nothing changed", service, table)
		}
	}

	// The restore itself, from the source confirmed. It lives as long as
	// this call: an interrupt cancels it (the table is left empty).
	req.Source = rep.Source
	var last *transport.RestoreStatus
	_, err = c.restoreCall(ctx, client, req, func(f *transport.RestoreStatus) {
		last = f
		if c.output == "text" {
			printRestoreProgress(c.stderr, f)
		}
	})
	if err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			textf(c.stderr, "replctl: restore interrupted: the owner empties %s/%s; run restore again\n", service, table)
			return err
		}
		return c.restoreError(service, table, owner.Primary, err)
	}
	if last == nil || last.Phase != transport.RestorePhaseDone {
		return fmt.Errorf("restore %s/%s: the owner %s ended the call before saying it was done", service, table, owner.Primary.Instance)
	}
	rep.Restored, rep.NewEpoch, rep.Rows, rep.Bytes, rep.Rate, rep.TransferMs = true, last.NewEpoch, last.Rows, last.Bytes, last.Rate, last.ElapsedMs
	rep.LogID, rep.Seq = last.LogID, last.Seq
	if c.output == "json" {
		return writeJSON(c.stdout, rep)
	}
	textf(c.stdout, "restored %s/%s on %s from %s: log %s at seq %d, %d rows (%s), new epoch %d\n",
		service, table, owner.Primary.Instance, rep.Source, rep.LogID, rep.Seq, rep.Rows, byteSize(rep.Bytes), rep.NewEpoch)
	return nil
}

// watchRestore follows the running or last restore of service/table on
// its primary (an automatic restore, or one another operator started):
// its frames until it is done (exit 0) or failed (exit 1).
func (c *cli) watchRestore(ctx context.Context, service, table string) error {
	owner, cn, err := c.primaryConn(ctx, service)
	if err != nil {
		return err
	}
	var last *transport.RestoreStatus
	_, err = c.restoreCall(ctx, cn.restore, &transport.RestoreRequest{Version: transport.ProtocolVersion, Table: table, Watch: true},
		func(f *transport.RestoreStatus) {
			last = f
			if c.output == "json" {
				_ = writeJSONLine(c.stdout, f)
				return
			}
			printRestoreProgress(c.stdout, f)
		})
	if err != nil {
		return c.restoreError(service, table, owner.Primary, err)
	}
	switch {
	case last == nil:
		return fmt.Errorf("restore -watch %s/%s: the owner %s ended the call without a report", service, table, owner.Primary.Instance)
	case last.Phase == transport.RestorePhaseNone:
		if c.output == "text" {
			textf(c.stdout, "no restore of %s/%s since %s opened\n", service, table, owner.Primary.Instance)
		}
	case last.Phase == transport.RestorePhaseFailed:
		return checkFailed(fmt.Errorf("the restore of %s/%s on %s failed: %s", service, table, owner.Primary.Instance, last.Err))
	}
	return nil
}

// restoreCall runs one Restore call and returns its first frame (the
// plan); each frame goes to each (when not nil).
func (c *cli) restoreCall(ctx context.Context, client *transport.RestoreClient, req *transport.RestoreRequest, each func(*transport.RestoreStatus)) (*transport.RestoreStatus, error) {
	s, err := client.Restore(ctx, req)
	if err != nil {
		return nil, err
	}
	var first *transport.RestoreStatus
	for {
		f, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return first, nil
		}
		if err != nil {
			return first, err
		}
		if first == nil {
			first = f
		}
		if each != nil {
			each(f)
		}
	}
}

// setPlan takes the owner's plan into rep: the candidates' live positions
// (a -from the brokers do not list is added), the chosen source and the
// histories.
func (rep *restoreReport) setPlan(p *transport.RestoreStatus) {
	for _, pos := range p.Positions {
		i := -1
		for j := range rep.Candidates {
			if rep.Candidates[j].Addr == pos.Source.Addr {
				i = j
				break
			}
		}
		if i < 0 {
			rep.Candidates = append(rep.Candidates, restoreCandidate{Service: pos.Source.Service, Instance: pos.Source.Instance, Addr: pos.Source.Addr})
			i = len(rep.Candidates) - 1
		}
		rc := &rep.Candidates[i]
		if rc.Service == "" {
			rc.Service, rc.Instance = pos.Source.Service, pos.Source.Instance
		}
		rc.LogID, rc.Epoch, rc.Seq, rc.State, rc.Error = pos.LogID, pos.Epoch, pos.Seq, pos.State, pos.Err
		rc.Chosen = p.Source.Addr != "" && pos.Source.Addr == p.Source.Addr
	}
	rep.Source = p.Source
	rep.LogID, rep.Epoch, rep.Seq = p.LogID, p.Epoch, p.Seq
	rep.ExpectedLogID, rep.OwnerLogID, rep.OwnerEpoch, rep.OwnerHead = p.ExpectedLogID, p.OwnerLogID, p.OwnerEpoch, p.OwnerHead
}

// restoreError words an error of the restore call.
func (c *cli) restoreError(service, table string, ep transport.Endpoint, err error) error {
	if errors.Is(err, transport.ErrRestoreRefused) {
		var re *transport.RemoteError
		msg := shortError(err)
		if errors.As(err, &re) {
			msg = re.Msg
		}
		msg = strings.TrimPrefix(msg, transport.ErrRestoreRefused.Error()+": ")
		hint := ""
		if strings.Contains(msg, "expected history") || strings.Contains(msg, "no candidate holds log") {
			hint = " (to take another history, and drop what the expected one holds beyond it, pass -override-log-id with its log id)"
		}
		return &wordedError{msg: fmt.Sprintf("%s/%s (%s at %s): restore refused: %s%s", service, table, ep.Instance, ep.Addr, msg, hint), err: err}
	}
	if errors.Is(err, transport.ErrPermission) {
		return &wordedError{msg: fmt.Sprintf("%s/%s (%s at %s): permission denied: %s (a restore needs an admin certificate: replctl tls cert create -admin NAME)",
			service, table, ep.Instance, ep.Addr, shortError(err)), err: err}
	}
	return c.ownerError(service, table, ep, err)
}

// confirm shows what the restore replaces and asks y/N on stdin.
func (c *cli) confirm(rep *restoreReport) (bool, error) {
	own := "an empty table"
	if rep.OwnerHead > 0 {
		own = fmt.Sprintf("log %s at seq %d", rep.OwnerLogID, rep.OwnerHead)
	}
	textf(c.stderr, "Replace %s/%s on %s (%s) with the replica of %s (log %s, seq %d)?\n"+
		"Writes acknowledged after seq %d that this replica never received are lost; writes are refused until it is done. [y/N] ",
		rep.Service, rep.Table, rep.Owner, own, rep.Source, rep.LogID, rep.Seq, rep.Seq)
	line, err := bufio.NewReader(c.stdin).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("read the confirmation: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, nil
}

// printRestorePlan writes the candidates and the choice.
func printRestorePlan(w io.Writer, rep *restoreReport) {
	textf(w, "restore %s/%s on %s (owner: ", rep.Service, rep.Table, rep.Owner)
	if rep.OwnerHead == 0 {
		textf(w, "empty, log %s)\n", rep.OwnerLogID)
	} else {
		textf(w, "log %s, epoch %d, seq %d)\n", rep.OwnerLogID, rep.OwnerEpoch, rep.OwnerHead)
	}
	tb := newTable(w, "PICK", "REPLICA", "ADDR", "LOG", "EPOCH", "SEQ", "STATE", "BROKER SAYS")
	for _, rc := range rep.Candidates {
		mark := ""
		if rc.Chosen {
			mark = "*"
		}
		said := fmt.Sprintf("log %s epoch %d seq %d %s", rc.BrokerLogID, rc.BrokerEpoch, rc.BrokerSeq, rc.BrokerState)
		if rc.BrokerLogID == "" && rc.BrokerSeq == 0 {
			said = "-"
		}
		if rc.Error != "" {
			tb.row(mark, rc.Service+"/"+rc.Instance, rc.Addr, "-", "-", "-", "error: "+rc.Error, said)
			continue
		}
		tb.row(mark, rc.Service+"/"+rc.Instance, rc.Addr, rc.LogID, u64(rc.Epoch), u64(rc.Seq), rc.State, said)
	}
	tb.flush()
	expected := rep.ExpectedLogID
	if rep.OverrideLogID != "" {
		expected += " (override: " + rep.OverrideLogID + ")"
	}
	if rep.Source.Addr != "" {
		textf(w, "expected history: log %s; source: %s (log %s, epoch %d, seq %d)\n", expected, rep.Source, rep.LogID, rep.Epoch, rep.Seq)
	} else {
		textf(w, "expected history: log %s; no source chosen\n", expected)
	}
}

// printRestoreProgress writes one status frame of a running restore.
func printRestoreProgress(w io.Writer, f *transport.RestoreStatus) {
	switch f.Phase {
	case transport.RestorePhasePlan:
		textf(w, "restoring from %s (log %s, seq %d)\n", f.Source, f.LogID, f.Seq)
	case transport.RestorePhaseTransfer:
		r := consumerRow{State: "transfer", TransferRows: f.Rows, TransferExpected: f.Expected, TransferPercent: percent(f.Rows, f.Expected),
			TransferRate: f.Rate, TransferEtaMs: f.EtaMs}
		textf(w, "%s, %s\n", r.progress(), byteSize(f.Bytes))
	case transport.RestorePhaseEpoch:
		textf(w, "copy complete: %d rows (%s) in %s; waiting for the new epoch\n", f.Rows, byteSize(f.Bytes), duration(time.Duration(f.ElapsedMs)*time.Millisecond))
	case transport.RestorePhaseDone:
		textf(w, "done: the table takes writes at epoch %d from seq %d\n", f.NewEpoch, f.Seq+1)
	case transport.RestorePhaseFailed:
		textf(w, "failed: %s\n", f.Err)
	}
}

// byteSize renders n bytes compactly: 512 B, 3.1 MB.
func byteSize(n uint64) string {
	switch {
	case n < 1e3:
		return fmt.Sprintf("%d B", n)
	case n < 1e6:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	case n < 1e9:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	}
	return fmt.Sprintf("%.1f GB", float64(n)/1e9)
}
