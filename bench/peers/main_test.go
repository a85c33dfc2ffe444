package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary play the reader and owner processes the
// workloads start (they re-execute their own binary).
func TestMain(m *testing.M) {
	if os.Getenv(envRole) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestQuick runs every workload at -quick sizes for replmesh and NATS (and
// Redis when redis-server is installed) and checks that every system
// produced every figure it owes, each a positive number, in the tables and
// the JSON.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the comparison (tens of seconds)")
	}
	systems := []string{"replmesh", "nats"}
	if _, err := exec.LookPath("redis-server"); err == nil {
		systems = append(systems, "redis")
	} else {
		t.Log("redis-server is not on PATH: Redis is skipped")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	jsonPath := filepath.Join(t.TempDir(), "peers.json")
	var out, errs bytes.Buffer
	args := []string{"-quick", "-count", "1", "-systems", strings.Join(systems, ","), "-json", jsonPath, "-dir", t.TempDir()}
	if err := run(ctx, args, &out, &errs); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, errs.String())
	}
	t.Logf("tables:\n%s", out.String())
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("json: %v", err)
	}
	have := map[string]bool{}
	for _, f := range rep.Figures {
		if !(f.Value > 0) {
			t.Errorf("%s / %s / %s / %s = %v, want a positive figure", f.Workload, f.Case, f.Metric, f.System, f.Value)
		}
		if len(f.Runs) != 1 {
			t.Errorf("%s / %s: %d runs, want 1", f.Workload, f.System, len(f.Runs))
		}
		have[strings.Fields(f.Workload)[0]+" "+f.System] = true
	}
	want := []string{"Physical limit", "Paced replmesh-durable", "Paced replmesh-in-memory", "W4 baseline"}
	for _, w := range []string{"W1", "W2", "W3", "W4"} {
		want = append(want, w+" "+sysRMDisk, w+" "+sysRMMem, w+" "+sysNATS)
		if len(systems) == 3 {
			want = append(want, w+" "+sysRedis)
		}
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("no %s figure", w)
		}
	}
	for _, s := range []string{"## W1 fan-out", "## W2 full state transfer", "## W3 catch-up", "## W4 point reads", "replmesh / best peer"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("tables lack %q", s)
		}
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown system", []string{"-systems", "kafka"}, `unknown "kafka"`},
		{"unknown workload", []string{"-workloads", "w9"}, `unknown "w9"`},
		{"bad readers", []string{"-readers", "1,x"}, "not a positive count"},
		{"value too small", []string{"-value", "8"}, "-value is out of range"},
		{"zero count", []string{"-count", "0"}, "-count must be positive"},
		{"stray argument", []string{"extra"}, "unexpected arguments"},
		{"unwritable profile", []string{"-workloads", "w1", "-cpuprofile", filepath.Join(t.TempDir(), "no", "such", "dir", "cpu.out")}, "-cpuprofile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errs bytes.Buffer
			err := run(context.Background(), tc.args, &out, &errs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}

// TestProfiledFlowWindow runs a small W1 with the owner's flow window set
// and a CPU profile: the run completes (every reader sees every change
// through a window smaller than the writer's) and the profile is written.
func TestProfiledFlowWindow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a fan-out")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	prof := filepath.Join(t.TempDir(), "cpu.out")
	var out, errs bytes.Buffer
	args := []string{"-quick", "-count", "1", "-systems", "replmesh", "-workloads", "w1", "-readers", "1",
		"-flowwindow", "64", "-cpuprofile", prof, "-dir", t.TempDir()}
	if err := run(ctx, args, &out, &errs); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, errs.String())
	}
	if !strings.Contains(out.String(), "1 reader") {
		t.Fatalf("tables lack the 1-reader W1 row:\n%s", out.String())
	}
	st, err := os.Stat(prof)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() == 0 {
		t.Fatal("empty CPU profile")
	}
}

// TestReaderProfile runs a small W3 with -readerprofile: each replmesh
// reader process writes a CPU profile of its own.
func TestReaderProfile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs reader processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var out, errs bytes.Buffer
	args := []string{"-quick", "-count", "1", "-systems", "replmesh", "-workloads", "w3",
		"-readerprofile", filepath.Join(dir, "reader"), "-dir", t.TempDir()}
	if err := run(ctx, args, &out, &errs); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, errs.String())
	}
	for _, name := range []string{"rm-w3-reader", "rm-w3-reader2"} {
		profs, err := filepath.Glob(filepath.Join(dir, "reader-"+name+"-*.pprof"))
		if err != nil {
			t.Fatal(err)
		}
		// Each W3 case runs its reader twice: before and after the missed
		// changes.
		if len(profs) != 2 {
			t.Fatalf("%d profiles of %s's processes, want 2: %v", len(profs), name, profs)
		}
		for _, p := range profs {
			if st, err := os.Stat(p); err != nil || st.Size() == 0 {
				t.Fatalf("profile %s: %v (empty: %v)", p, err, err == nil)
			}
		}
	}
}

func TestMedians(t *testing.T) {
	f := func(v float64) figure {
		return figure{Workload: "W", Case: "c", Metric: "m", System: sysNATS, Value: v}
	}
	got := medians([][]figure{{f(3)}, {f(1)}, {f(2)}})
	if len(got) != 1 || got[0].Value != 2 || len(got[0].Runs) != 3 {
		t.Fatalf("medians = %+v, want one figure of value 2 over 3 runs", got)
	}
	got = medians([][]figure{{f(4)}, {f(1)}})
	if got[0].Value != 1 {
		t.Fatalf("median of 4 and 1 = %v, want the lower middle 1", got[0].Value)
	}
}

func TestRatioToBestPeer(t *testing.T) {
	row := func(redis, nats float64) map[string]figure {
		return map[string]figure{sysRedis: {Value: redis}, sysNATS: {Value: nats}, sysBaseline: {Value: 1}}
	}
	for _, tc := range []struct {
		name   string
		v      float64
		row    map[string]figure
		higher bool
		want   float64
	}{
		{"rate against the faster peer", 150, row(200, 100), true, 0.75},
		{"latency against the quicker peer", 30, row(20, 10), false, 3},
		{"the baseline is not a peer", 2, map[string]figure{sysNATS: {Value: 4}, sysBaseline: {Value: 1}}, false, 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ratio(tc.v, tc.row, tc.higher); got != tc.want {
				t.Fatalf("ratio = %v, want %v", got, tc.want)
			}
		})
	}
	if got := ratio(1, map[string]figure{sysBaseline: {Value: 1}}, true); !math.IsNaN(got) {
		t.Fatalf("ratio with no peer = %v, want NaN", got)
	}
	var out bytes.Buffer
	figs := []figure{
		{Workload: "W1", Case: "1 reader", Metric: "changes/s", System: sysRedis, Value: 200e3, Unit: unitRate, Higher: true},
		{Workload: "W1", Case: "1 reader", Metric: "changes/s", System: sysRMMem, Value: 300e3, Unit: unitRate, Higher: true},
	}
	if err := writeTables(&out, figs); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "in-memory 1.50× (higher is better)") || !strings.Contains(out.String(), "300.0k/s") {
		t.Fatalf("table:\n%s\nlacks the ratio 1.50× or the figure 300.0k/s", out.String())
	}
}
