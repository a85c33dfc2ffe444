package chaos

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// grantCluster lays out owners o1, o2 (at addresses a1, a2) and brokers
// b1, b2 whose grant logs are given (times in ms, written in ns).
func grantCluster(t *testing.T, logs map[string][]string) *cluster {
	t.Helper()
	dir := t.TempDir()
	cl := &cluster{}
	for _, name := range []string{"o1", "o2"} {
		cl.owners = append(cl.owners, &node{cl: cl, name: name, role: RoleOwner, addr: "a" + name[1:], logDir: dir})
	}
	for _, name := range []string{"b1", "b2"} {
		cl.brokers = append(cl.brokers, &node{cl: cl, name: name, role: RoleBroker, logDir: dir})
	}
	for _, n := range cl.all() {
		var b strings.Builder
		for _, l := range logs[n.name] {
			b.WriteString(l + "\n")
		}
		if err := os.WriteFile(n.grantLogPath(), []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return cl
}

const ms = int64(1e6)

func start(at int64) string { return fmt.Sprintf("S %d 1", at*ms) }
func role(at int64, r string, epoch int, addr string) string {
	return fmt.Sprintf("P %d %s %d %s", at*ms, r, epoch, addr)
}
func read(call, ret, confirmedMs int64, epoch int, inst, addr string) string {
	return fmt.Sprintf("L %d %d %d leader %d %s %s", call*ms, ret*ms, confirmedMs, epoch, inst, addr)
}

// The grant check must accept what a correct cluster does and refuse a
// stale confirmed read, an epoch granted twice, and a registry naming
// another process under an instance's name.
func TestGrantCheck(t *testing.T) {
	// o1 starts, is granted epoch 1; o2 starts and takes over at epoch 2
	// (seen by o2 at 1000 ms).
	owners := map[string][]string{
		"o1": {start(100), role(101, "-", 0, "a1"), role(200, "primary", 1, "a1"), role(1200, "standby", 2, "a1")},
		"o2": {start(300), role(301, "standby", 1, "a2"), role(1000, "primary", 2, "a2")},
	}
	with := func(brokers map[string][]string) map[string][]string {
		m := map[string][]string{}
		for k, v := range owners {
			m[k] = v
		}
		for k, v := range brokers {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name        string
		logs        map[string][]string
		result, raw porcupine.CheckResult
		violations  int
		synthesized int
	}{
		{"linearizable", with(map[string][]string{
			"b1": {read(50, 51, -1, 0, "-", "-"), read(250, 252, 5, 1, "o1", "a1"), read(1100, 1101, 3, 2, "o2", "a2")},
			"b2": {read(900, 901, 2, 1, "o1", "a1"), read(1010, 1011, 1, 2, "o2", "a2")},
		}), porcupine.Ok, porcupine.Ok, 0, 0},
		{"stale confirmed read", with(map[string][]string{
			"b1": {read(250, 252, 5, 1, "o1", "a1")},
			// b2 confirmed 2 ms before its read, yet names the old
			// primary a second after o2 saw its grant.
			"b2": {read(2000, 2001, 2, 1, "o1", "a1")},
		}), porcupine.Illegal, porcupine.Illegal, 1, 0},
		{"stale read with an old confirmation is not checked as fresh", with(map[string][]string{
			// A paused leader waking up: its newest confirmation is 1.8 s
			// old, so its read may have been the state before o2's grant.
			"b2": {read(2000, 2001, 1800, 1, "o1", "a1")},
		}), porcupine.Ok, porcupine.Illegal, 0, 0},
		{"unconfirmed stale read is left out", with(map[string][]string{
			"b2": {read(2000, 2001, -1, 1, "o1", "a1")},
		}), porcupine.Ok, porcupine.Illegal, 0, 0},
		{"grant seen only by a read", map[string][]string{
			"o1": {start(100), role(200, "primary", 1, "a1")},
			"o2": {start(300)},
			"b1": {read(500, 501, 1, 2, "o2", "a2"), read(600, 601, 1, 2, "o2", "a2")},
		}, porcupine.Ok, porcupine.Ok, 0, 1},
		{"one epoch granted twice", map[string][]string{
			"o1": {start(100), role(200, "primary", 1, "a1")},
			"o2": {start(100), role(250, "primary", 1, "a2")},
		}, porcupine.Illegal, porcupine.Illegal, 1, 0},
		{"epoch going back", map[string][]string{
			"o1": {start(100), role(200, "primary", 2, "a1")},
			"o2": {start(100)},
			"b1": {read(300, 301, 1, 2, "o1", "a1"), read(400, 401, 1, 1, "o2", "a2")},
		}, porcupine.Illegal, porcupine.Illegal, 1, 1},
		{"another process under an instance's name", with(map[string][]string{
			"b1": {read(250, 252, 5, 1, "o1", "a9")},
		}), porcupine.Ok, porcupine.Ok, 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := loadGrants(grantCluster(t, tt.logs))
			if err != nil {
				t.Fatal(err)
			}
			res := g.check()
			if res.result != tt.result || res.raw != tt.raw || res.synthesized != tt.synthesized {
				t.Fatalf("got %s (raw %s, %d synthesized); want %s (raw %s, %d synthesized)", res.result, res.raw, res.synthesized, tt.result, tt.raw, tt.synthesized)
			}
			v := newViolations()
			checkGrants(v, res)
			if v.counts[vGrant] != tt.violations || v.total() != tt.violations {
				t.Fatalf("violations:\n%s\nwant %d grant violations", v, tt.violations)
			}
		})
	}
}

func TestGrantLogs_BadRecord(t *testing.T) {
	for _, bad := range []string{"P 12 primary x a1", "Q 1 2", "P 12"} {
		cl := grantCluster(t, map[string][]string{"o1": {start(1), bad}})
		if _, err := loadGrants(cl); err == nil {
			t.Errorf("record %q: no error", bad)
		}
	}
}

func TestImpliedReadsDropped(t *testing.T) {
	a, b := grantValue{1, "o1"}, grantValue{2, "o2"}
	r := func(call, ret int64, v grantValue) porcupine.Operation {
		return porcupine.Operation{Input: grantInput{}, Call: call, Return: ret, Output: v}
	}
	tests := []struct {
		name       string
		in         []porcupine.Operation
		keptByCall []int64
	}{
		{"a run keeps its ends", []porcupine.Operation{r(1, 2, a), r(3, 4, a), r(5, 6, a), r(7, 8, a)}, []int64{1, 7}},
		{"a read that returned before the first is kept", []porcupine.Operation{r(10, 20, a), r(0, 15, a), r(30, 40, a)}, []int64{10, 0, 30}},
		{"a read called after the last is kept", []porcupine.Operation{r(10, 20, a), r(50, 60, a), r(30, 40, a)}, []int64{10, 50, 30}},
		{"values end runs", []porcupine.Operation{r(1, 2, a), r(3, 4, a), r(5, 6, b), r(7, 8, a), r(9, 10, a), r(11, 12, a)}, []int64{1, 3, 5, 7, 11}},
		{"one read", []porcupine.Operation{r(1, 2, a)}, []int64{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []int64
			for _, o := range impliedReadsDropped(tt.in) {
				got = append(got, o.Call)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.keptByCall) {
				t.Fatalf("kept %v, want %v", got, tt.keptByCall)
			}
		})
	}
}

// A woken broker's confirmation counts as stale only if it was asked
// after the newer grant was known committed, is fresh enough to confirm a
// lease, and names an older epoch.
func TestStaleConfirmations(t *testing.T) {
	path := t.TempDir() + "/b.grants.log"
	at := func(msec int64) time.Time { return time.Unix(0, msec*ms) }
	lines := []string{
		read(900, 901, 5, 1, "o1", "a1"),     // before the wake: not looked at
		read(1100, 1101, 5, 1, "o1", "a1"),   // asked at 1094 > 1000, fresh, old epoch: stale
		read(1100, 1101, 400, 1, "o1", "a1"), // too old a confirmation to confirm a lease
		read(1005, 1006, 10, 1, "o1", "a1"),  // asked at 994, before the grant was known committed
		read(1200, 1201, 5, 2, "o2", "a2"),   // the new epoch
		read(1300, 1301, -1, 1, "o1", "a1"),  // no confirmation
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale, reads := staleConfirmations(path, at(1000), at(1000), 2)
	if len(stale) != 1 || reads != 5 {
		t.Fatalf("stale %q of %d reads; want 1 of 5", stale, reads)
	}
}
