package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

func (c *cli) status(ctx context.Context, args []string) error {
	fs := c.cmdFlags("status", "")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("status takes no arguments, got %q", pos)
	}
	st, err := c.brokerStatus(ctx)
	if err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(c.stdout, st)
	}
	w := c.stdout
	now := time.Now()

	textf(w, "BROKERS (answered by %s)\n", st.Broker)
	t := newTable(w, "NAME", "ADDR", "STATE")
	for _, b := range st.Brokers {
		t.row(b.Name, b.Addr, b.State)
	}
	t.flush()

	textf(w, "\nSERVICES\n")
	t = newTable(w, "SERVICE", "PRIMARY", "ADDR", "EPOCH", "STANDBYS")
	for _, o := range st.Owners {
		var sb []string
		for _, s := range o.Standbys {
			sb = append(sb, fmt.Sprintf("%s (%s)", s.Instance, s.Addr))
		}
		primary := o.Primary.Instance
		if primary == "" {
			primary = "(none)"
		}
		t.row(o.Service, primary, o.Primary.Addr, u64(o.Epoch), strings.Join(sb, ", "))
	}
	t.flush()

	textf(w, "\nINSTANCES\n")
	t = newTable(w, "SERVICE", "INSTANCE", "ADDR", "ROLE", "BROKER", "LAST SEEN")
	for _, in := range st.Instances {
		t.row(in.Service, in.Instance, in.Addr, in.Role, in.Broker, age(now, in.LastSeenMs))
	}
	t.flush()

	textf(w, "\nTABLES\n")
	printTables(w, tableRows(st))

	if len(st.Overrides) > 0 {
		textf(w, "\nMODE OVERRIDES\n")
		printOverrides(w, st.Overrides)
	}
	printRaft(w, st.Raft)
	printRefused(w, now, st.Refused)
	return nil
}

// printRaft prints the answering broker's view of the brokers' Raft group:
// its own role, term and log indexes, then the voters with the leader
// marked.
func printRaft(w io.Writer, r *transport.RaftStatus) {
	if r == nil {
		return
	}
	leader := r.LeaderName
	switch {
	case r.Leader == 0:
		leader = "(none: no majority reachable?)"
	case leader == "":
		leader = fmt.Sprintf("%x", r.Leader)
	}
	confirmed := "never"
	if r.ConfirmedMs >= 0 {
		confirmed = duration(time.Duration(r.ConfirmedMs)*time.Millisecond) + " ago"
	}
	textf(w, "\nRAFT (this broker: %s, id %x, term %d, commit %d, applied %d, quorum confirmed %s)\nleader: %s\n",
		raftRole(r.State), r.ID, r.Term, r.Commit, r.Applied, confirmed, leader)
	if r.JoinRefused != "" {
		textf(w, "this broker is not a voter: the cluster refuses to add it: %s\n", r.JoinRefused)
	}
	t := newTable(w, "VOTER", "RAFT ID", "ADDR", "ROLE")
	for _, m := range r.Members {
		role := "follower"
		if m.ID == r.Leader {
			role = "leader"
		}
		if m.ID == r.ID {
			role += " (this broker)"
		}
		t.row(m.Name, fmt.Sprintf("%x", m.ID), m.Addr, role)
	}
	t.flush()
}

// raftRole renders raft's state name (StateLeader) as a role (leader).
func raftRole(state string) string {
	if s, ok := strings.CutPrefix(state, "State"); ok && s != "" {
		return strings.ToLower(s)
	}
	return state
}

// printRefused prints the Registers the broker refused because another
// live session holds the instance name.
func printRefused(w io.Writer, now time.Time, refused []transport.RefusedRegister) {
	if len(refused) == 0 {
		return
	}
	textf(w, "\nREFUSED REGISTERS (instance name held by a live session)\n")
	t := newTable(w, "SERVICE", "INSTANCE", "REFUSED ADDR", "HOLDER ADDR", "LAST", "COUNT")
	for _, r := range refused {
		t.row(r.Service, r.Instance, r.Addr, r.Holder, age(now, r.AtMs), u64(r.Count))
	}
	t.flush()
}

// tableRow is one table of an owner service (the JSON form of "tables").
type tableRow struct {
	Service string `json:"service"`
	Table   string `json:"table"`
	// Owner and Addr name the service's primary ("" when none is alive).
	Owner string `json:"owner"`
	Addr  string `json:"addr"`
	Epoch uint64 `json:"epoch"` // the table's epoch on the primary
	Head  uint64 `json:"head"`  // seq of the newest change, as last reported
	LogID string `json:"log_id"`
	// Mode is the mode the table runs in unless a subscription asks for
	// another: the broker override if set (ModeSource "override"), else
	// the owner's default ("owner"), else push ("default").
	Mode       string `json:"mode"`
	ModeSource string `json:"mode_source"`
	// RunningModes are the modes its subscriptions' streams run now
	// (auto picks push or pull per subscription), sorted, each once.
	RunningModes []string      `json:"running_modes"`
	Standbys     []standbyHead `json:"standbys"`
}

// standbyHead is a standby's copy of a table.
type standbyHead struct {
	Instance string `json:"instance"`
	Head     uint64 `json:"head"`
	LogID    string `json:"log_id"`
}

func tableRows(st *transport.StatusResponse) []tableRow {
	rows := []tableRow{}
	for _, o := range st.Owners {
		for _, ti := range o.Tables {
			r := tableRow{Service: o.Service, Table: ti.Table, Owner: o.Primary.Instance, Addr: o.Primary.Addr,
				Epoch: ti.Epoch, Head: ti.Head, LogID: ti.LogID, Standbys: []standbyHead{}}
			r.Mode, r.ModeSource = effectiveMode(st.Overrides[o.Service+"/"+ti.Table], "", ti.Mode)
			r.RunningModes = runningModes(st, o.Service, ti.Table)
			for _, in := range st.Instances {
				if in.Service != o.Service || in.Role != transport.RoleStandby {
					continue
				}
				for _, sti := range in.Tables {
					if sti.Table == ti.Table {
						r.Standbys = append(r.Standbys, standbyHead{Instance: in.Instance, Head: sti.Head, LogID: sti.LogID})
					}
				}
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// runningModes returns the modes the subscriptions of service/table run,
// sorted, each once (never nil).
func runningModes(st *transport.StatusResponse, service, table string) []string {
	seen := map[string]bool{}
	out := []string{}
	for _, in := range st.Instances {
		for _, s := range in.Subscriptions {
			if s.Service == service && s.Table == table && s.Running != "" && !seen[s.Running] {
				seen[s.Running] = true
				out = append(out, s.Running)
			}
		}
	}
	sort.Strings(out)
	return out
}

func printTables(w io.Writer, rows []tableRow) {
	t := newTable(w, "TABLE", "OWNER", "EPOCH", "HEAD", "MODE", "STANDBYS", "LOG")
	for _, r := range rows {
		var sb []string
		for _, s := range r.Standbys {
			h := fmt.Sprintf("%s@%d", s.Instance, s.Head)
			if s.LogID != r.LogID {
				h += " (other log " + s.LogID + ")"
			}
			sb = append(sb, h)
		}
		mode := r.Mode
		if r.ModeSource == "override" {
			mode += " (override)"
		}
		if len(r.RunningModes) > 1 || len(r.RunningModes) == 1 && r.RunningModes[0] != r.Mode {
			mode += " -> " + strings.Join(r.RunningModes, ", ")
		}
		owner := r.Owner
		if owner == "" {
			owner = "(none)"
		}
		t.row(r.Service+"/"+r.Table, owner, u64(r.Epoch), u64(r.Head), mode, strings.Join(sb, ", "), r.LogID)
	}
	t.flush()
}

func printOverrides(w io.Writer, ovr map[string]string) {
	keys := make([]string, 0, len(ovr))
	for k := range ovr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	t := newTable(w, "TABLE", "MODE")
	for _, k := range keys {
		t.row(k, ovr[k])
	}
	t.flush()
}

// effectiveMode applies the precedence broker override > subscription
// option > owner's table default > push to the modes the broker reports
// (wire strings), and says which level won. A level that is not set, or
// holds a mode this build does not know, does not win.
func effectiveMode(override, sub, owner string) (mode, source string) {
	for _, l := range []struct{ m, src string }{{override, "override"}, {sub, "subscription"}, {owner, "owner"}} {
		if m, err := modes.ParseWire(l.m); err == nil && m != modes.Unset {
			return m.String(), l.src
		}
	}
	return modes.Push.String(), "default"
}

func (c *cli) tables(ctx context.Context, args []string) error {
	fs := c.cmdFlags("tables", "")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("tables takes no arguments, got %q", pos)
	}
	st, err := c.brokerStatus(ctx)
	if err != nil {
		return err
	}
	rows := tableRows(st)
	if c.output == "json" {
		return writeJSON(c.stdout, rows)
	}
	printTables(c.stdout, rows)
	return nil
}

// modeResult is the JSON form of "mode set".
type modeResult struct {
	Service  string `json:"service"`
	Table    string `json:"table"`
	Mode     string `json:"mode"` // "" when the override was cleared
	Revision uint64 `json:"revision"`
}

func (c *cli) mode(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("mode: want 'mode set SERVICE/TABLE MODE' or 'mode list'")
	}
	switch args[0] {
	case "set":
		return c.modeSet(ctx, args[1:])
	case "list":
		return c.modeList(ctx, args[1:])
	}
	return usagef("mode %q: want 'mode set SERVICE/TABLE MODE' or 'mode list'", args[0])
}

func (c *cli) modeSet(ctx context.Context, args []string) error {
	fs := c.cmdFlags("mode set", "SERVICE/TABLE push|pull|auto|clear")
	strict := fs.Bool("strict", false, "refuse (exit 1) a table the broker does not know, instead of warning and setting it")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("mode set: want SERVICE/TABLE MODE, got %d arguments", len(pos))
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	var m modes.Mode // Unset: clear the override
	if pos[1] != "clear" {
		if m, err = modes.ParseMode(pos[1]); err != nil {
			return usagef("mode set: %v, or clear to remove the override", err)
		}
		// An unknown table is allowed (its owner may register later), but
		// it is more often a typo: say so.
		st, err := c.brokerStatus(ctx)
		if err != nil {
			return err
		}
		switch why := unknownTable(st, service, table); {
		case why == "":
		case *strict:
			return checkFailed(fmt.Errorf("mode set: %s; override not set (-strict)", why))
		default:
			_ = textf(c.stderr, "replctl: warning: %s; the override is set anyway and applies if the table appears (-strict refuses)\n", why)
		}
	}
	mode := m.Wire()
	var res *transport.SetModeResponse
	err = c.callBroker(ctx, "mode set", func(ctx context.Context, b *transport.BrokerClient) error {
		var err error
		res, err = b.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: service, Table: table, Mode: mode})
		return err
	})
	if err != nil {
		return err
	}
	if c.output == "json" {
		return writeJSON(c.stdout, modeResult{Service: service, Table: table, Mode: mode, Revision: res.Revision})
	}
	if mode == "" {
		textf(c.stdout, "mode override of %s/%s cleared (registry revision %d)\n", service, table, res.Revision)
	} else {
		textf(c.stdout, "mode of %s/%s set to %s (registry revision %d)\n", service, table, mode, res.Revision)
	}
	return nil
}

// unknownTable says why service/table is unknown to the broker whose
// status is st ("" when an instance of the service reports the table).
func unknownTable(st *transport.StatusResponse, service, table string) string {
	known := false
	var tables []string
	add := func(ts []transport.TableInfo) {
		for _, t := range ts {
			if !slices.Contains(tables, t.Table) {
				tables = append(tables, t.Table)
			}
		}
	}
	for _, o := range st.Owners {
		if o.Service == service {
			known = true
			add(o.Tables)
		}
	}
	for _, in := range st.Instances {
		if in.Service == service {
			known = true
			add(in.Tables)
		}
	}
	switch {
	case slices.Contains(tables, table):
		return ""
	case !known:
		return fmt.Sprintf("the broker knows no service %q", service)
	case len(tables) == 0:
		return fmt.Sprintf("service %q owns no table known to the broker, so not %q", service, table)
	}
	slices.Sort(tables)
	return fmt.Sprintf("service %q has no table %q (its tables: %s)", service, table, strings.Join(tables, ", "))
}

func (c *cli) modeList(ctx context.Context, args []string) error {
	fs := c.cmdFlags("mode list", "")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("mode list takes no arguments, got %q", pos)
	}
	st, err := c.brokerStatus(ctx)
	if err != nil {
		return err
	}
	ovr := st.Overrides
	if ovr == nil {
		ovr = map[string]string{}
	}
	if c.output == "json" {
		return writeJSON(c.stdout, ovr)
	}
	printOverrides(c.stdout, ovr)
	return nil
}
