package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func init() {
	// Every run of the modes workload in this package's tests
	// (TestRun_Modes's and TestRun_EveryWorkloadAtTinySize's) is
	// tiny: the point is that it keeps working, not its figures.
	modesTestSizes = &modesSizes{
		HotRate: 1000, HotKeys: 50, HotReads: 10,
		ColdRate: 10, ColdKeys: 50, ColdReads: 500,
		Warmup: 100 * time.Millisecond, Measure: 500 * time.Millisecond, SettleMax: 20 * time.Second,
		PullInterval: 100 * time.Millisecond, MaxStaleness: 100 * time.Millisecond,
		AutoRatio: 10, AutoWindow: 500 * time.Millisecond,
	}
}

func TestRun_Modes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, progress bytes.Buffer
	args := []string{"-workloads", "modes", "-count", "1", "-o", "json", "-datadir", t.TempDir()}
	if err := run(ctx, args, &out, &progress); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	var rep struct {
		Results []result `json:"results"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("decode output: %v\n%s", err, out.String())
	}
	got := map[string]result{}
	for _, r := range rep.Results {
		if r.Figure == "error" {
			t.Errorf("%s failed: %s", r.Workload, r.Notes)
		}
		got[r.Workload+"|"+r.Figure] = r
	}
	if len(got) != len(rep.Results) {
		t.Errorf("%d results but %d distinct (workload, figure) pairs", len(rep.Results), len(got))
	}
	row := func(w, f string) result {
		t.Helper()
		r, ok := got[w+"|"+f]
		if !ok {
			t.Errorf("no %q figure for %q", f, w)
		}
		return r
	}

	for _, table := range []string{modesHot, modesCold} {
		for _, mode := range []string{"push", "pull", "auto"} {
			w := "modes " + table + " " + mode
			for _, f := range []string{modesBytes, modesMsgs, modesCPU, modesP50, modesP99} {
				if r := row(w, f); r.Value < 0 {
					t.Errorf("%s %s = %v, want >= 0", w, f, r.Value)
				}
			}
			if r := row(w, modesBytes); r.Value <= 0 {
				t.Errorf("%s moved no bytes: %+v", w, r) // changes, deltas or heartbeats: something crosses
			}
			if r := row(w, modesP99); (table == modesCold && mode != "pull") != (r.Target != nil && r.OK != nil) {
				t.Errorf("%s p99 staleness: target %+v, verdict %v; want one exactly on the cold table's push and auto", w, r.Target, r.OK)
			}
			_, hasRatio := got[w+"|"+modesRatio]
			if want := table == modesHot && mode != "push"; hasRatio != want {
				t.Errorf("%s has a push-bytes ratio: %v, want %v", w, hasRatio, want)
			}
		}
		if r := row("modes "+table+" push", modesMsgs); r.Value <= 0 {
			t.Errorf("%s push: no messages counted on the wire: %+v", table, r)
		}
	}
	// Even at this size a pull carries each changed key once: fewer bytes.
	for _, mode := range []string{"pull", "auto"} {
		if r := row("modes hot "+mode, modesRatio); r.Value <= 1 || r.OK == nil {
			t.Errorf("hot %s: push moved %v times its bytes (verdict %v), want > 1", mode, r.Value, r.OK)
		}
	}
	if r := row("modes hot push", modesCPU); r.Value <= 0 {
		t.Errorf("hot push consumer CPU = %v, want > 0 (it applies every change)", r.Value)
	}
	// Auto settles on pull for the hot table and push for the cold one,
	// and runs that mode through the whole window.
	for w, want := range map[string]string{"modes hot auto": "pull..pull", "modes cold auto": "push..push"} {
		if r := row(w, modesBytes); !strings.Contains(r.Notes, "in the window "+want+", 0 switches") {
			t.Errorf("%s did not run %s through the window: %s", w, want, r.Notes)
		}
	}
}
