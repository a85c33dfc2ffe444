package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The transfer workload re-executes this (test) binary as its consumer.
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m,
		// badger's ristretto cache and glog-style flushers outlive DB.Close briefly.
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"),
	)
}

// tinyArgs run every workload at a very small size, so the benchmark
// cannot rot; the figures themselves mean nothing here.
var tinyArgs = []string{
	"-quick", "-consumers", "1,4", "-changes", "2000", "-keys", "500", "-window", "256",
	"-rows", "5000", "-missed", "2000", "-getrows", "2000", "-getops", "5000",
	"-paced", "300ms", "-loopback", "100ms", "-hostile", "20", "-hostile-tables", "8",
	"-replicas", "mem,disk,diskonly",
}

func TestRun_EveryWorkloadAtTinySize(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out, progress bytes.Buffer
	args := append([]string{"-o", "json", "-datadir", t.TempDir()}, tinyArgs...)
	if err := run(ctx, args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	var rep struct {
		Run     map[string]any `json:"run"`
		Results []result       `json:"results"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("decode output: %v\n%s", err, out.String())
	}
	want := map[string][]string{
		"loopback":                {"TCP throughput"},
		"fanout mem x1":           {"changes/s to all", "p50 commit-to-applied", "p99 commit-to-applied"},
		"fanout mem x4":           {"changes/s to all", "p50 commit-to-applied", "p99 commit-to-applied"},
		"fanout disk x1":          {"changes/s to all", "p50 commit-to-applied", "p99 commit-to-applied"},
		"fanout disk x4":          {"changes/s to all", "p50 commit-to-applied", "p99 commit-to-applied"},
		"paced mem":               {"p50 commit-to-applied", "p99 commit-to-applied"},
		"paced disk":              {"p50 commit-to-applied", "p99 commit-to-applied"},
		"transfer":                {"rows/s into a durable replica", "MB/s (keys+values)", "consumer peak RSS", "owner Go heap in use, peak"},
		"transfer mem":            {"rows/s into an in-memory replica", "MB/s (keys+values)", "consumer peak RSS", "owner Go heap in use, peak"},
		"transfer diskonly":       {"rows/s into a disk-only replica", "MB/s (keys+values)", "consumer peak RSS", "owner Go heap in use, peak"},
		"restore":                 {"rows/s, replica -> empty owner", "rows/s, owner -> new replica (same run)", "restore/transfer rows/s"},
		"resume consumer restart": {"time to caught up"},
		"resume owner restart":    {"time to caught up"},
		"get mem":                 {"Replica.Get p50", "Replica.Get mean", "allocs/op"},
		"get disk":                {"Replica.Get p50", "Replica.Get mean", "allocs/op"},
		"security fanout mem x1": {"changes/s to all, plaintext", "changes/s to all, mTLS", "mTLS/plaintext changes/s",
			"p99 commit-to-applied, mTLS", "mTLS/plaintext p99 latency"},
		"security fanout mem x4":  {"changes/s to all, plaintext", "changes/s to all, mTLS", "mTLS/plaintext changes/s"},
		"security transfer":       {"rows/s, plaintext", "rows/s, mTLS", "mTLS/plaintext rows/s"},
		"security hostile broker": {"registrations by one identity: refused or denied"},
		"footprint":               {"process floor (no component), RSS"},
		"footprint mem":           {"process peak RSS (VmHWM)", "component peak RSS, above the floor", "component RSS caught up, above the floor"},
		"footprint disk":          {"process peak RSS (VmHWM)", "component peak RSS, above the floor", "component RSS caught up, above the floor"},
	}
	got := map[string]result{}
	for _, r := range rep.Results {
		got[r.Workload+"|"+r.Figure] = r
		if r.Figure == "error" {
			t.Errorf("%s failed: %s", r.Workload, r.Notes)
		}
	}
	for w, figs := range want {
		for _, f := range figs {
			r, ok := got[w+"|"+f]
			switch {
			case !ok:
				t.Errorf("no %q figure for %q", f, w)
			case r.Value <= 0 && f != "allocs/op":
				t.Errorf("%s %s = %v, want > 0", w, f, r.Value)
			case r.Target != nil && r.OK == nil:
				t.Errorf("%s %s has a target but no verdict", w, f)
			}
		}
	}
	if r := got["fanout mem x4|changes/s to all"]; r.OfLoopback <= 0 {
		t.Errorf("fan-out is not reported as a fraction of loopback: %+v", r)
	}
	if r := got["resume consumer restart|time to caught up"]; strings.Contains(r.Notes, "NOT a resume") {
		t.Errorf("consumer restart: %s", r.Notes)
	}
	if r := got["resume owner restart|time to caught up"]; strings.Contains(r.Notes, "NOT a resume") {
		t.Errorf("owner restart: %s", r.Notes)
	}
	if len(got) != len(rep.Results) {
		t.Errorf("%d results but %d distinct (workload, figure) pairs", len(rep.Results), len(got))
	}
}

func TestRun_TextTable(t *testing.T) {
	var out, progress bytes.Buffer
	if err := run(context.Background(), []string{"-workloads", "loopback", "-loopback", "50ms", "-count", "3"}, &out, &progress); err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var head, row string
	for i, l := range lines {
		if strings.HasPrefix(l, "workload ") && i+1 < len(lines) {
			head, row = l, lines[i+1]
		}
	}
	if head == "" {
		t.Fatalf("no table header in:\n%s", out.String())
	}
	for _, col := range []string{"figure", "value", "target", "ok?", "of loopback", "redis/nats (quoted)", "notes"} {
		if !strings.Contains(head, col) {
			t.Errorf("header %q lacks column %q", head, col)
		}
	}
	if !strings.HasPrefix(row, "loopback ") || !strings.Contains(row, "MB/s") || !strings.Contains(row, "100.0%") {
		t.Errorf("loopback row = %q", row)
	}
	// Columns are aligned: "value" starts at the same offset in both lines.
	if i := strings.Index(head, "value"); i < 0 || len(row) <= i || row[i-1] != ' ' || row[i] == ' ' {
		t.Errorf("columns not aligned:\n%s\n%s", head, row)
	}
}

func TestParseFlags_Rejects(t *testing.T) {
	for _, args := range [][]string{
		{"-workloads", "fanout,nope"},
		{"-consumers", "0"},
		{"-replicas", "ssd"},
		{"-o", "yaml"},
		{"-changes", "0"},
		{"-tls", "maybe"},
		{"-tls", ","},
		{"-hostile", "-1"},
		{"-hostile-tables", "5000"},
		{"extra"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
				t.Errorf("parseFlags(%q) accepted", args)
			}
		})
	}
	t.Run("accepted: -quick -changes 7", func(t *testing.T) {
		o, err := parseFlags([]string{"-quick", "-changes", "7"}, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if o.changes != 7 || o.rows != 20_000 || len(o.workloads) != len(workloadOrder) {
			t.Errorf("-quick -changes 7: changes=%d rows=%d workloads=%v", o.changes, o.rows, o.workloads)
		}
	})
}

func TestMedians(t *testing.T) {
	rs := []result{
		{Workload: "a", Figure: "x", Value: 5, Unit: unitCount, Notes: "run 1"},
		{Workload: "a", Figure: "y", Value: 1, Unit: unitCount},
		{Workload: "a", Figure: "x", Value: 1, Unit: unitCount, Notes: "run 2"},
		{Workload: "a", Figure: "error", Notes: "boom"},
		{Workload: "a", Figure: "x", Value: 3, Unit: unitCount, Notes: "run 3"},
	}
	got := medians(rs)
	if len(got) != 3 {
		t.Fatalf("got %d results, want 3: %+v", len(got), got)
	}
	if got[0].Figure != "error" {
		t.Errorf("errors are not kept: %+v", got)
	}
	if x := got[1]; x.Figure != "x" || x.Value != 3 || x.Notes != "median of 3 runs, 1 .. 5; run 3" {
		t.Errorf("median of x = %+v, want the run with value 3 and the spread in its notes", x)
	}
	if y := got[2]; y.Figure != "y" || y.Value != 1 || y.Notes != "" {
		t.Errorf("single run y = %+v, want it unchanged", y)
	}
}
