package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// The columns of every table. The peers are the systems replmesh is
// compared with; the baseline (a Go map) is a physical reference, not a
// peer.
const (
	sysRedis    = "redis"
	sysNATS     = "nats"
	sysRMDisk   = "replmesh-durable"
	sysRMMem    = "replmesh-in-memory"
	sysBaseline = "baseline"
)

var columns = []string{sysRedis, sysNATS, sysRMDisk, sysRMMem, sysBaseline}

func isPeer(sys string) bool { return sys == sysRedis || sys == sysNATS }

// Units of figures.
const (
	unitRate  = "/s"
	unitNanos = "ns"
	unitBytes = "B"
	unitBps   = "B/s"
)

// figure is one measured number.
type figure struct {
	Workload string  `json:"workload"` // "W1 fan-out", ...
	Case     string  `json:"case"`     // "1 reader", ...
	Metric   string  `json:"metric"`   // "changes/s", "p99", ...
	System   string  `json:"system"`   // one of columns, or "limit"
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Higher   bool    `json:"higher_is_better"`
	Note     string  `json:"note,omitempty"`
	// Runs holds every run's value (the figure is their median).
	Runs []float64 `json:"runs,omitempty"`
}

func (f figure) id() string {
	return f.Workload + "\x00" + f.Case + "\x00" + f.Metric + "\x00" + f.System
}

// medians folds the figures of several runs into one per id: the median
// value (the lower middle for an even count), the note of the first run.
func medians(runs [][]figure) []figure {
	var order []string
	byID := map[string]*figure{}
	for _, run := range runs {
		for _, f := range run {
			id := f.id()
			if m, ok := byID[id]; ok {
				m.Runs = append(m.Runs, f.Value)
				continue
			}
			c := f
			c.Runs = []float64{f.Value}
			byID[id] = &c
			order = append(order, id)
		}
	}
	out := make([]figure, 0, len(order))
	for _, id := range order {
		f := *byID[id]
		s := slices.Clone(f.Runs)
		slices.Sort(s)
		f.Value = s[(len(s)-1)/2]
		out = append(out, f)
	}
	return out
}

// format prints v in unit u compactly: 172.7k/s, 7.9 ms, 391 MB.
func format(v float64, u string) string {
	switch u {
	case unitRate:
		return benchkit.SI(v) + "/s"
	case unitNanos:
		return formatDuration(time.Duration(v))
	case unitBytes:
		return fmt.Sprintf("%.0f MB", v/1e6)
	case unitBps:
		return fmt.Sprintf("%.2f GB/s", v/1e9)
	}
	return fmt.Sprintf("%.3g %s", v, u)
}

// formatDuration renders d with the precision of the peer tables (see
// benchkit.FormatDuration).
func formatDuration(d time.Duration) string { return benchkit.FormatDuration(d, 3, 1) }

// ratio is replmesh's figure over the best peer's; for a figure where
// lower is better it is still value/best (above 1: worse). NaN when no
// peer has the figure.
func ratio(v float64, row map[string]figure, higher bool) float64 {
	best := math.NaN()
	for sys, f := range row {
		if !isPeer(sys) {
			continue
		}
		if math.IsNaN(best) || higher && f.Value > best || !higher && f.Value < best {
			best = f.Value
		}
	}
	if math.IsNaN(best) || best == 0 {
		return math.NaN()
	}
	return v / best
}

// writeTables prints one table per workload: a row per case and metric, a
// column per system, and replmesh's ratio to the best peer.
func writeTables(w io.Writer, figs []figure) error {
	var workloads []string
	for _, f := range figs {
		if !slices.Contains(workloads, f.Workload) {
			workloads = append(workloads, f.Workload)
		}
	}
	for _, wl := range workloads {
		var rows []string
		cells := map[string]map[string]figure{}
		var notes []string
		for _, f := range figs {
			if f.Workload != wl {
				continue
			}
			r := f.Case + "\x00" + f.Metric
			if cells[r] == nil {
				cells[r] = map[string]figure{}
				rows = append(rows, r)
			}
			cells[r][f.System] = f
			if f.Note != "" {
				notes = append(notes, fmt.Sprintf("%s, %s, %s: %s", f.System, f.Case, f.Metric, f.Note))
			}
		}
		if _, err := fmt.Fprintf(w, "\n## %s\n\n", wl); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		used := usedColumns(cells)
		fmt.Fprintf(tw, "case\tmetric\t%s\treplmesh / best peer\n", strings.Join(used, "\t"))
		for _, r := range rows {
			cs, metric, _ := strings.Cut(r, "\x00")
			row := cells[r]
			line := []string{cs, metric}
			higher := false
			for _, f := range row {
				higher = f.Higher
			}
			for _, c := range used {
				if f, ok := row[c]; ok {
					line = append(line, format(f.Value, f.Unit))
				} else {
					line = append(line, "-")
				}
			}
			var rs []string
			for _, sys := range []string{sysRMDisk, sysRMMem} {
				f, ok := row[sys]
				if !ok {
					continue
				}
				if q := ratio(f.Value, row, higher); !math.IsNaN(q) {
					rs = append(rs, fmt.Sprintf("%s %.2f×", strings.TrimPrefix(sys, "replmesh-"), q))
				}
			}
			dir := "(lower is better)"
			if higher {
				dir = "(higher is better)"
			}
			if len(rs) == 0 {
				dir = ""
			}
			cell := strings.TrimSpace(strings.Join(rs, ", ") + " " + dir)
			if base, ok := row[sysBaseline]; ok && base.Value > 0 {
				var bs []string
				for _, sys := range []string{sysRMDisk, sysRMMem} {
					if f, ok := row[sys]; ok {
						bs = append(bs, fmt.Sprintf("%s %.1f×", strings.TrimPrefix(sys, "replmesh-"), f.Value/base.Value))
					}
				}
				if len(bs) > 0 {
					cell += "; to the baseline: " + strings.Join(bs, ", ")
				}
			}
			line = append(line, cell)
			fmt.Fprintln(tw, strings.Join(line, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, n := range notes {
			if _, err := fmt.Fprintf(w, "  - %s\n", n); err != nil {
				return err
			}
		}
	}
	return nil
}

// usedColumns lists the columns that hold a figure in some row, in table
// order, then any other system (the machine limits).
func usedColumns(cells map[string]map[string]figure) []string {
	seen := map[string]bool{}
	for _, row := range cells {
		for sys := range row {
			seen[sys] = true
		}
	}
	var out []string
	for _, c := range columns {
		if seen[c] {
			out = append(out, c)
			delete(seen, c)
		}
	}
	var rest []string
	for c := range seen {
		rest = append(rest, c)
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// report is the -json output.
type report struct {
	Command string   `json:"command"`
	Count   int      `json:"count"`
	Sizes   sizes    `json:"sizes"`
	Load    []string `json:"load"` // uptime's load averages before each run and at the end
	Skipped []string `json:"skipped,omitempty"`
	Figures []figure `json:"figures"`
}

func writeJSON(w io.Writer, r report) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}
