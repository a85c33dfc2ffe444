package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
)

// Units of a result's value.
const (
	unitChangesPerSec = "changes/s"
	unitRowsPerSec    = "rows/s"
	unitBytesPerSec   = "B/s"
	unitBytes         = "B"
	unitNanos         = "ns"
	unitCount         = "count"
	unitKB            = "kB"
	unitRatio         = "ratio"
)

// target is a figure the issue asks for: Op is ">=" (at least) or "<"
// (under).
type target struct {
	Op    string  `json:"op"`
	Value float64 `json:"value"`
}

func atLeast(v float64) *target { return &target{Op: ">=", Value: v} }
func under(v float64) *target   { return &target{Op: "<", Value: v} }

func (t *target) met(v float64) bool {
	if t.Op == ">=" {
		return v >= t.Value
	}
	return v < t.Value
}

// result is one line of the table.
type result struct {
	Workload string  `json:"workload"`
	Figure   string  `json:"figure"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit,omitempty"`
	Target   *target `json:"target,omitempty"`
	OK       *bool   `json:"ok,omitempty"`
	// OfLoopback is the payload throughput behind the figure divided by
	// the loopback TCP throughput (0: not applicable or not measured).
	OfLoopback float64 `json:"of_loopback,omitempty"`
	// Reference holds the Redis / NATS figures quoted in the issue.
	Reference string `json:"reference,omitempty"`
	Notes     string `json:"notes,omitempty"`

	payloadBps float64 // payload bytes/s, for OfLoopback
}

// bench holds the run's options and the results gathered so far.
type bench struct {
	opts   options
	dir    string
	stderr io.Writer
	logger *slog.Logger

	mu        sync.Mutex
	results   []result
	started   time.Time
	loadStart string // /proc/loadavg when the run began and ended: other
	loadEnd   string // processes on the machine skew every figure
}

// loadAvg returns the 1, 5 and 15 minute load averages ("" where unknown).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

func (b *bench) add(r result) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.Target != nil && r.Figure != "error" {
		ok := r.Target.met(r.Value)
		r.OK = &ok
	}
	b.results = append(b.results, r)
}

func (b *bench) progress(format string, a ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started.IsZero() {
		b.started = time.Now()
	}
	fmt.Fprintf(b.stderr, "replbench %6.1fs  %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, a...))
}

// finish reduces repeated runs to their medians and fills in the fractions
// of loopback throughput.
func (b *bench) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.results = medians(b.results)
	var loopback float64
	for _, r := range b.results {
		if r.Workload == "loopback" && r.Figure != "error" {
			loopback = r.Value
		}
	}
	if loopback <= 0 {
		return
	}
	for i := range b.results {
		if r := &b.results[i]; r.payloadBps > 0 {
			r.OfLoopback = r.payloadBps / loopback
		}
	}
}

// medians reduces the results of repeated runs (same workload and figure)
// to the run with the median value, in the order figures first appeared;
// its notes say the spread. Errors are all kept.
func medians(rs []result) []result {
	var order []string
	groups := map[string][]result{}
	var out []result
	for _, r := range rs {
		if r.Figure == "error" {
			out = append(out, r)
			continue
		}
		k := r.Workload + "\x00" + r.Figure
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		g := groups[k]
		if len(g) == 1 {
			out = append(out, g[0])
			continue
		}
		slices.SortStableFunc(g, func(a, b result) int { return cmp.Compare(a.Value, b.Value) })
		m := g[(len(g)-1)/2]
		spread := fmt.Sprintf("median of %d runs, %s .. %s", len(g), formatValue(g[0].Value, m.Unit), formatValue(g[len(g)-1].Value, m.Unit))
		m.Notes = describe(slices.DeleteFunc([]string{spread, m.Notes}, func(s string) bool { return s == "" })...)
		out = append(out, m)
	}
	return out
}

// header describes the machine and the sizes.
func (b *bench) header() map[string]any {
	o := b.opts
	return map[string]any{
		"go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.NumCPU(),
		"value_bytes": o.valueSize, "changes": o.changes, "keys": o.keys, "window": o.window,
		"rows": o.rows, "missed": o.missed, "getrows": o.getRows, "rate": o.rate, "paced_s": o.paced.Seconds(),
		"quick": o.quick, "count": o.count, "loadavg_start": b.loadStart, "loadavg_end": b.loadEnd,
		"tls": o.tls, "security_rows": o.securityRows, "hostile": o.hostile, "hostile_tables": o.hostileTables,
	}
}

func (b *bench) writeJSON(w io.Writer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(map[string]any{"run": b.header(), "results": b.results})
}

func (b *bench) writeText(w io.Writer) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	o := b.opts
	fmt.Fprintf(w, "replbench: %s %s/%s, %d CPUs, loopback 127.0.0.1, %d-byte values, owner on disk (async)\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), o.valueSize)
	fmt.Fprintf(w, "sizes: changes=%d keys=%d window=%d rows=%d missed=%d getrows=%d paced=%d/s for %s; each figure the median of %d runs%s\n",
		o.changes, o.keys, o.window, o.rows, o.missed, o.getRows, o.rate, o.paced, o.count, map[bool]string{true: " (quick)"}[o.quick])
	if b.loadStart != "" {
		fmt.Fprintf(w, "load average (1/5/15 min): %s at start, %s at end; figures are only meaningful on an otherwise idle machine\n", b.loadStart, b.loadEnd)
	}
	fmt.Fprintf(w, "target: the project's goal; redis/nats: figures measured earlier for those systems on this machine (quoted, not measured here)\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "workload\tfigure\tvalue\ttarget\tok?\tof loopback\tredis/nats (quoted)\tnotes")
	for _, r := range b.results {
		val, tgt, ok, frac := "-", "", "", ""
		if r.Figure != "error" {
			val = formatValue(r.Value, r.Unit)
		}
		if r.Target != nil {
			tgt = r.Target.Op + " " + formatValue(r.Target.Value, r.Unit)
		}
		if r.OK != nil {
			ok = map[bool]string{true: "ok", false: "MISS"}[*r.OK]
		}
		if r.OfLoopback > 0 {
			frac = fmt.Sprintf("%.1f%%", 100*r.OfLoopback)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Workload, r.Figure, val, tgt, ok, frac, r.Reference, r.Notes)
	}
	return tw.Flush()
}

// formatValue renders v in a unit a person reads at a glance.
func formatValue(v float64, unit string) string {
	switch unit {
	case unitChangesPerSec, unitRowsPerSec:
		return benchkit.SI(v) + "/s"
	case unitBytesPerSec:
		return fmt.Sprintf("%.1f MB/s", v/1e6)
	case unitBytes:
		return fmt.Sprintf("%.1f MB", v/1e6)
	case unitKB:
		return fmt.Sprintf("%.1f kB", v/1e3)
	case unitRatio:
		return fmt.Sprintf("%.3f×", v)
	case unitNanos:
		return formatDuration(time.Duration(v))
	case unitCount:
		if v == math.Trunc(v) {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%g %s", v, unit)
}

// formatDuration renders d with replbench's precision (see
// benchkit.FormatDuration).
func formatDuration(d time.Duration) string { return benchkit.FormatDuration(d, 2, 2) }

// samples collects latencies; percentiles are exact (a sorted copy).
type samples []int64

func (s samples) percentiles(ps ...float64) []time.Duration {
	sorted := make([]int64, len(s))
	copy(sorted, s)
	slices.Sort(sorted)
	out := make([]time.Duration, len(ps))
	if len(sorted) == 0 {
		return out
	}
	for i, p := range ps {
		// Nearest rank.
		k := int(math.Ceil(p*float64(len(sorted)))) - 1
		k = max(0, min(k, len(sorted)-1))
		out[i] = time.Duration(sorted[k])
	}
	return out
}

// describe says a sample count in words, for notes.
func describe(parts ...string) string { return strings.Join(parts, "; ") }
