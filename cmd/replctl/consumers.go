package main

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
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
	// A full transfer's progress while State is "transferring" (zero
	// otherwise): rows received, rows the owner announced (0: unknown, an
	// older owner), their percentage (0 when unknown), key and value bytes
	// received, rows per second and the estimated time left.
	TransferRows     uint64  `json:"transfer_rows"`
	TransferExpected uint64  `json:"transfer_rows_expected"`
	TransferPercent  float64 `json:"transfer_percent"`
	TransferBytes    uint64  `json:"transfer_bytes"`
	TransferRate     float64 `json:"transfer_rows_per_sec"`
	TransferEtaMs    int64   `json:"transfer_eta_ms"`
}

// stateTransferring is the replica state of a full transfer under way.
const stateTransferring = "transferring"

// transferring reports whether the row is a full transfer under way.
func (r *consumerRow) transferring() bool { return r.State == stateTransferring }

// progress renders a full transfer's progress: "transferring
// 120000/400000 30% 85k rows/s ETA 3s" (what is unknown is left out).
func (r *consumerRow) progress() string {
	s := r.State + " " + u64(r.TransferRows)
	if r.TransferExpected > 0 {
		s += fmt.Sprintf("/%d %d%%", r.TransferExpected, int(r.TransferPercent))
	} else {
		s += " rows"
	}
	if r.TransferRate > 0 {
		s += " " + quantity(r.TransferRate) + " rows/s"
	}
	if r.TransferEtaMs > 0 {
		s += " ETA " + eta(time.Duration(r.TransferEtaMs)*time.Millisecond)
	}
	return s
}

// percent is the share of expected that done is, at most 100 (0 when
// expected is unknown).
func percent(done, expected uint64) float64 {
	if expected == 0 {
		return 0
	}
	return min(100, math.Floor(float64(done)*1000/float64(expected))/10)
}

// quantity renders a rate compactly: 850, 85k, 1.2M.
func quantity(v float64) string {
	switch {
	case v < 1e3:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v < 1e6:
		return strconv.FormatFloat(v/1e3, 'f', 0, 64) + "k"
	}
	return strconv.FormatFloat(v/1e6, 'f', 1, 64) + "M"
}

// eta renders a time left in whole seconds, rounded up: 3s, 1m5s, 2h0m0s.
func eta(d time.Duration) string {
	return max(time.Second, (d + time.Second - 1).Truncate(time.Second)).String()
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
			if r.transferring() {
				r.TransferRows, r.TransferExpected, r.TransferBytes = s.XferRows, s.XferExpected, s.XferBytes
				r.TransferRate, r.TransferEtaMs = s.XferRate, s.XferEtaMs
				r.TransferPercent = percent(s.XferRows, s.XferExpected)
			}
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
		seq, lag, state := u64(r.Seq), u64(r.Lag), r.State
		if r.transferring() {
			// The lag of a replica being copied says little; how far the
			// copy is says more. Seq stays when an older copy serves.
			lag, state = "", r.progress()
			if r.Seq == 0 {
				seq = ""
			}
		}
		t.row(r.Service+"/"+r.Instance, r.Owner+"/"+r.Table, mode, seq, u64(r.Head), lag,
			duration(time.Duration(r.StaleMs)*time.Millisecond), state)
	}
	return t.flush()
}
