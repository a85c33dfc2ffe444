package main

import (
	"context"
	"sort"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// consumerRow is one subscription (the JSON form of "consumers").
type consumerRow struct {
	Service  string `json:"service"` // the consumer's service
	Instance string `json:"instance"`
	Role     string `json:"role"`
	Broker   string `json:"broker"`        // broker holding its session
	Owner    string `json:"owner_service"` // the table's owner service
	Table    string `json:"table"`
	// Mode is the subscription's mode after precedence (see tableRow);
	// Requested is the mode the subscription asked for ("" = owner's).
	Mode       string `json:"mode"`
	ModeSource string `json:"mode_source"`
	Requested  string `json:"requested_mode"`
	Running    string `json:"running_mode"`          // what the stream runs now (auto picks push or pull)
	Reason     string `json:"mode_reason,omitempty"` // why the last switch happened
	Seq        uint64 `json:"seq"`                   // applied seq
	Head       uint64 `json:"head"`                  // the owner's head as the broker last heard it
	Lag        uint64 `json:"lag"`                   // owner head minus applied seq, as the consumer last heard it
	StaleMs    int64  `json:"stale_ms"`              // how old the replica's data is, in milliseconds
	State      string `json:"state"`
}

func consumerRows(st *transport.StatusResponse) []consumerRow {
	heads := map[string]transport.TableInfo{}
	for _, o := range st.Owners {
		for _, ti := range o.Tables {
			heads[o.Service+"/"+ti.Table] = ti
		}
	}
	rows := []consumerRow{}
	for _, in := range st.Instances {
		for _, s := range in.Subscriptions {
			key := s.Service + "/" + s.Table
			ti := heads[key]
			r := consumerRow{Service: in.Service, Instance: in.Instance, Role: in.Role, Broker: in.Broker,
				Owner: s.Service, Table: s.Table, Requested: s.Mode, Seq: s.Seq, Head: ti.Head, Lag: s.Lag,
				StaleMs: s.StaleMs, State: s.State, Running: s.Running, Reason: s.Reason}
			r.Mode, r.ModeSource = effectiveMode(st.Overrides[key], s.Mode, ti.Mode)
			rows = append(rows, r)
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i], rows[j]
		if a.Owner+"/"+a.Table != b.Owner+"/"+b.Table {
			return a.Owner+"/"+a.Table < b.Owner+"/"+b.Table
		}
		if a.Service != b.Service {
			return a.Service < b.Service
		}
		return a.Instance < b.Instance
	})
	return rows
}

func (c *cli) consumers(ctx context.Context, args []string) error {
	fs := c.cmdFlags("consumers", "")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("consumers takes no arguments, got %q", pos)
	}
	st, err := c.brokerStatus(ctx)
	if err != nil {
		return err
	}
	rows := consumerRows(st)
	if c.output == "json" {
		return writeJSON(c.stdout, rows)
	}
	t := newTable(c.stdout, "CONSUMER", "TABLE", "MODE", "SEQ", "HEAD", "LAG", "STALE", "STATE")
	for _, r := range rows {
		mode := r.Mode
		if r.ModeSource == "override" {
			mode += " (override)"
		}
		if r.Running != "" && r.Running != r.Mode {
			mode += " -> " + r.Running
		}
		t.row(r.Service+"/"+r.Instance, r.Owner+"/"+r.Table, mode, u64(r.Seq), u64(r.Head), u64(r.Lag),
			duration(time.Duration(r.StaleMs)*time.Millisecond), r.State)
	}
	return t.flush()
}
