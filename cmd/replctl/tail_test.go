package main

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

func TestReplan(t *testing.T) {
	hist := []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 8}}
	start := func(head, first uint64) *transport.Start {
		return &transport.Start{Version: transport.ProtocolVersion, LogID: "L", Epoch: 2, HeadSeq: head, FirstSeq: first, Epochs: hist}
	}
	for _, tc := range []struct {
		name              string
		st                *transport.Start
		pos               position
		printed, fromFlag bool
		want              position
		warn              string // substring; "" = no warning
		err               error
	}{
		{name: "new history, nothing printed", st: start(20, 1), pos: position{"OLD", 5, 1},
			want: position{"L", 20, 2}},
		{name: "new history after printing", st: start(20, 1), pos: position{"OLD", 5, 1}, printed: true,
			want: position{"L", 20, 2}, warn: "new history (log L, was OLD)"},
		{name: "epoch guess corrected", st: start(20, 1), pos: position{"L", 5, 2},
			want: position{"L", 5, 1}},
		{name: "changes lost in a failover", st: start(20, 1), pos: position{"L", 10, 1}, printed: true,
			want: position{"L", 7, 1}, warn: "changes 8..10 printed above are not in the owner's history"},
		{name: "owner behind what was printed", st: start(6, 1), pos: position{"L", 9, 2}, printed: true,
			want: position{"L", 6, 1}, warn: "head 6 is behind seq 9"},
		{name: "-from before the log's start", st: start(20, 10), pos: position{"L", 3, 2}, fromFlag: true,
			want: position{"L", 3, 2}, err: errTrimmed},
		{name: "trimmed after printing", st: start(20, 10), pos: position{"L", 3, 1}, printed: true,
			want: position{"L", 20, 2}, warn: "no longer in the owner's log (the oldest kept is 10)"},
		{name: "nothing better known", st: start(20, 1), pos: position{"L", 12, 2}, printed: true,
			want: position{"L", 12, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warn, err := replan(tc.st, tc.pos, tc.printed, tc.fromFlag)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if got != tc.want {
				t.Errorf("position %+v, want %+v", got, tc.want)
			}
			if (tc.warn == "") != (warn == "") || !strings.Contains(warn, tc.warn) {
				t.Errorf("warning %q, want %q", warn, tc.warn)
			}
		})
	}
}

// A tail follows the table across a failover: when the primary goes away
// it reconnects to the promoted standby and goes on from the last change
// it printed, with no gap and no repeat.
func TestTail_FollowsFailover(t *testing.T) {
	brokerAddr := startBroker(t, "bf")
	a := component(t, brokerAddr, "stores", "a", true)
	b := component(t, brokerAddr, "stores", "b", true)
	ta, err := a.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	tb, err := b.Own("managers")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "a primary", func() bool {
		ra, _ := a.Role()
		rb, _ := b.Role()
		return ra == transport.RolePrimary || rb == transport.RolePrimary
	})
	primary, standby, tp, ts := a, b, ta, tb
	if r, _ := b.Role(); r == transport.RolePrimary {
		primary, standby, tp, ts = b, a, tb, ta
	}
	put(t, tp, "first", "1")

	tail := startTail(t, "-broker", brokerAddr, "-o", "json", "stores/managers")
	written := writeUntil(t, tp, "pre", func() bool { return tail.stdout.contains("\n") })
	// The standby holds everything the tail may have printed: no change
	// is lost in the failover.
	waitUntil(t, 20*time.Second, "standby caught up", func() bool { return ts.Head() == tp.Head() })
	primary.Close()
	waitUntil(t, 30*time.Second, "standby promoted", func() bool { r, _ := standby.Role(); return r == transport.RolePrimary })
	after := writeUntil(t, ts, "post", func() bool { return tail.stdout.contains(`"key":"post-`) })
	maps.Copy(written, after)
	tail.cmd.Process.Signal(os.Interrupt)
	r := tail.wait(t)
	if r.code != 0 {
		t.Fatalf("tail: %v", r)
	}
	t.Logf("tail stderr:\n%s", r.stderr)
	if !strings.Contains(r.stderr, "reconnecting") {
		t.Errorf("tail did not say it reconnects: %q", r.stderr)
	}
	var prev uint64
	var epochs []uint64
	for i, l := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		var cl changeLine
		if err := json.Unmarshal([]byte(l), &cl); err != nil {
			t.Fatalf("line %d %q: %v", i, l, err)
		}
		if cl.Key == nil || written[cl.Seq] != *cl.Key {
			t.Fatalf("line %d: seq %d key %v, written there: %q", i, cl.Seq, cl.Key, written[cl.Seq])
		}
		if i > 0 && cl.Seq != prev+1 {
			t.Fatalf("line %d: seq %d after %d", i, cl.Seq, prev)
		}
		prev = cl.Seq
		if len(epochs) == 0 || epochs[len(epochs)-1] != cl.Epoch {
			epochs = append(epochs, cl.Epoch)
		}
	}
	if len(epochs) != 2 || epochs[1] <= epochs[0] {
		t.Fatalf("epochs of the printed changes %v, want the old primary's then a newer one", epochs)
	}
}
