package chaos

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// The checkers must catch what they are for: each case feeds one a
// history with a known defect and wants exactly that violation.

func okOp(id int, kind opKind, seq uint64, ws ...WriteOp) *op {
	return &op{id: id, kind: kind, writes: ws, class: ClassOK, seq: seq, epoch: 1, node: "o1"}
}

func w(k, v string) WriteOp { return WriteOp{Key: k, Value: []byte(v)} }

func TestCheckState(t *testing.T) {
	unique := okOp(1, opUnique, 1, w("u/0/1", "a"))
	group := okOp(2, opGroup, 4, w("g/0/1/0", "g"), w("g/0/1/1", "g"), w("g/0/1/2", "g"))
	failed := &op{id: 3, kind: opUnique, writes: []WriteOp{w("u/0/2", "b")}, class: ClassFailed}
	v1 := &op{id: 4, kind: opOverwrite, key: "o/0/1", version: 1, writes: []WriteOp{w("o/0/1", "v1")}, class: ClassOK, seq: 5, epoch: 1}
	v2 := &op{id: 5, kind: opOverwrite, key: "o/0/1", version: 2, writes: []WriteOp{w("o/0/1", "v2")}, class: ClassOK, seq: 6, epoch: 1}
	// A setup write that failed and was retried with the same rows.
	bulkFailed := &op{id: 6, kind: opBulk, writes: []WriteOp{w("b/000000", "x"), w("b/000001", "y")}, class: ClassFailed}
	bulkRetry := okOp(7, opBulk, 7, w("b/000000", "x"), w("b/000001", "y"))
	ops := []*op{unique, group, failed, v1, v2, bulkFailed, bulkRetry}
	good := map[string][]byte{"u/0/1": []byte("a"), "g/0/1/0": []byte("g"), "g/0/1/1": []byte("g"), "g/0/1/2": []byte("g"), "o/0/1": []byte("v2"),
		"b/000000": []byte("x"), "b/000001": []byte("y")}

	tests := []struct {
		name string
		edit func(m map[string][]byte)
		want string // violation kind; "" for none
	}{
		{"all there", func(map[string][]byte) {}, ""},
		{"acknowledged write missing", func(m map[string][]byte) { delete(m, "u/0/1") }, vLost},
		{"acknowledged write with another value", func(m map[string][]byte) { m["u/0/1"] = []byte("x") }, vLost},
		{"part of a group", func(m map[string][]byte) { delete(m, "g/0/1/1") }, vLost},
		{"failed write applied", func(m map[string][]byte) { m["u/0/2"] = []byte("b") }, vPhantom},
		{"row nobody wrote", func(m map[string][]byte) { m["u/9/9"] = []byte("?") }, vPhantom},
		{"retried write missing", func(m map[string][]byte) { delete(m, "b/000001") }, vLost},
		{"overwritten key went back a version", func(m map[string][]byte) { m["o/0/1"] = []byte("v1") }, vLost},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows := map[string][]byte{}
			for k, v := range good {
				rows[k] = v
			}
			tt.edit(rows)
			v := newViolations()
			checkState(v, "test", ops, rows, &truth{})
			if tt.want == "" {
				if v.total() != 0 {
					t.Fatalf("violations on a good state:\n%s", v)
				}
				return
			}
			if v.counts[tt.want] == 0 {
				t.Fatalf("no %s violation; got:\n%s", tt.want, v)
			}
		})
	}
}

func TestCheckState_UnknownGroupIsAllOrNothing(t *testing.T) {
	g := &op{id: 1, kind: opGroup, class: ClassUnknown, writes: []WriteOp{w("g/0/1/0", "g"), w("g/0/1/1", "g"), w("g/0/1/2", "g")}}
	for _, tt := range []struct {
		name string
		rows map[string][]byte
		want int
	}{
		{"none of the group", map[string][]byte{}, 0},
		{"all of the group", map[string][]byte{"g/0/1/0": []byte("g"), "g/0/1/1": []byte("g"), "g/0/1/2": []byte("g")}, 0},
		{"part of the group", map[string][]byte{"g/0/1/0": []byte("g")}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			v := newViolations()
			checkState(v, "test", []*op{g}, tt.rows, &truth{})
			if got := v.counts[vAtomicity]; got != tt.want {
				t.Errorf("rows %v: %d atomicity violations, want %d", tt.rows, got, tt.want)
			}
		})
	}
}

func TestCheckApplyLog(t *testing.T) {
	hist := &History{
		Epochs: transport.EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 4}},
		First:  1, Head: 5, Complete: true,
		Changes: []HistoryChange{
			{Seq: 1, Epoch: 1, Key: "a", TxnEnd: true}, {Seq: 2, Epoch: 1, Key: "b", TxnEnd: true},
			{Seq: 3, Epoch: 1, Key: "c", TxnEnd: true}, {Seq: 4, Epoch: 2, Key: "d", TxnEnd: true},
			{Seq: 5, Epoch: 2, Key: "e", TxnEnd: true},
		},
	}
	tests := []struct {
		name string
		log  string
		want string
	}{
		{"in order", "S 0 0\nC 1 1 1 p a\nC 2 1 1 p b\nE 2 1\nC 3 1 1 p c\nE 3 1\nC 4 2 1 p d\nC 5 2 1 p e\nE 5 1\n", ""},
		{"restart resumes after unlogged changes", "S 0 0\nC 1 1 1 p a\nE 1 1\nS 3 1\nC 4 2 1 p d\nE 4 1\n", ""},
		{"full transfer, then on", "S 0 0\nR 3 1\nC 4 2 1 p d\nE 4 1\n", ""},
		{"wiped, then again from the start", "S 0 0\nC 1 1 1 p a\nE 1 1\nW\nS 0 0\nC 1 1 1 p a\nE 1 1\n", ""},
		{"a record cut short by a kill", "S 0 0\nC 1 1 1 p a\nE 1 1\nC 2 1 1 p", ""},
		{"gap", "S 0 0\nC 1 1 1 p a\nE 1 1\nC 3 1 1 p c\nE 3 1\n", vOutOfOrder},
		{"duplicate", "S 0 0\nC 1 1 1 p a\nE 1 1\nC 1 1 1 p a\nE 1 1\n", vDuplicated},
		{"epoch goes down", "S 0 0\nR 3 2\nC 4 1 1 p d\nE 4 1\n", vOutOfOrder},
		{"restart behind what was applied", "S 0 0\nC 1 1 1 p a\nC 2 1 1 p b\nE 2 1\nS 1 1\n", vOutOfOrder},
		{"stale epoch", "S 0 0\nR 3 1\nC 4 1 1 p x\nE 4 1\n", vStaleEpoch},
		{"a change the history does not have", "S 0 0\nC 1 1 1 p z\nE 1 1\n", vStaleEpoch},
		{"batch ends inside a group", "S 0 0\nC 1 1 0 p a\nE 1 1\n", vAtomicity},
		{"a bad read", "S 0 0\nV read before Ready saw 3 rows at seq 2\n", vRead},
	}
	dir := t.TempDir()
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".log")
			if err := os.WriteFile(path, []byte(tt.log), 0o644); err != nil {
				t.Fatal(err)
			}
			v := newViolations()
			if _, err := checkApplyLog(v, "c1", path, &truth{h: hist}); err != nil {
				t.Fatal(err)
			}
			if tt.want == "" {
				if v.total() != 0 {
					t.Fatalf("case %d: violations on a good log:\n%s", i, v)
				}
				return
			}
			if v.counts[tt.want] == 0 {
				t.Fatalf("case %d: no %s violation; got:\n%s", i, tt.want, v)
			}
		})
	}
}

// A change applied with an epoch the final history does not give its seq
// (a deposed primary's) is a violation, however it came about: lease
// fencing leaves no window in which it is expected.
func TestCheckApplyLog_StaleEpochChange(t *testing.T) {
	hist := &History{Epochs: transport.EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 3}}, First: 1, Head: 3, Complete: true,
		Changes: []HistoryChange{{Seq: 1, Epoch: 1, Key: "a", TxnEnd: true}, {Seq: 2, Epoch: 1, Key: "b", TxnEnd: true}, {Seq: 3, Epoch: 2, Key: "c", TxnEnd: true}}}
	at := time.Unix(1000, 0)
	log := "S 2 1\nC 3 1 1 p x\nE 3 " + strconv.FormatInt(at.UnixNano(), 10) + "\n"
	path := filepath.Join(t.TempDir(), "apply.log")
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	v := newViolations()
	if _, err := checkApplyLog(v, "c1", path, &truth{h: hist}); err != nil {
		t.Fatal(err)
	}
	if v.counts[vStaleEpoch] != 1 || len(v.known) != 0 {
		t.Fatalf("violations %v, known %v; want one stale-epoch violation", v.counts, v.known)
	}
}

func TestCheckHistory(t *testing.T) {
	hist := &History{Epochs: transport.EpochHistory{{Epoch: 1, Seq: 1}}, First: 1, Head: 2, Complete: true,
		Changes: []HistoryChange{{Seq: 1, Epoch: 1, Key: "u/0/1", Value: []byte("a"), TxnEnd: true}, {Seq: 2, Epoch: 1, Key: "u/0/2", Value: []byte("b"), TxnEnd: true}}}
	rows := map[string][]byte{"u/0/1": []byte("a"), "u/0/2": []byte("b")}
	ops := []*op{okOp(1, opUnique, 1, w("u/0/1", "a")), okOp(2, opUnique, 2, w("u/0/2", "b"))}
	v := newViolations()
	if n := checkHistory(v, &truth{h: hist}, ops, rows); n != 2 || v.total() != 0 {
		t.Fatalf("good history: %d checked, violations:\n%s", n, v)
	}
	// An acknowledged write at another seq than the one acknowledged.
	ops[1].seq = 1
	v = newViolations()
	checkHistory(v, &truth{h: hist}, ops, rows)
	if v.counts[vLost] == 0 {
		t.Fatalf("write acknowledged at the wrong seq not caught:\n%s", v)
	}
	// A log that does not replay to the rows.
	v = newViolations()
	checkHistory(v, &truth{h: hist}, ops[:1], map[string][]byte{"u/0/1": []byte("a")})
	if v.counts[vHistory] == 0 {
		t.Fatalf("log that does not replay to the rows not caught:\n%s", v)
	}
}

func TestPct(t *testing.T) {
	ds := []time.Duration{5, 1, 4, 2, 3}
	if got := pct(ds, 0.5); got != 3 {
		t.Errorf("p50 = %v, want 3", got)
	}
	if got := pct(ds, 0.99); got != 5 {
		t.Errorf("p99 = %v, want 5", got)
	}
	if got := pct(nil, 0.99); got != 0 {
		t.Errorf("p99 of nothing = %v", got)
	}
}

func TestCheckEpochs(t *testing.T) {
	at := func(id int, node string, epoch uint64, class string) *op {
		return &op{id: id, kind: opUnique, writes: []WriteOp{w("u/0/"+strconv.Itoa(id), "x")}, class: class, seq: uint64(id), epoch: epoch, node: node}
	}
	tests := []struct {
		name    string
		ops     []*op
		want    int // split-epoch violations
		checked int
	}{
		{"one instance per epoch", []*op{at(1, "o1", 1, ClassOK), at(2, "o1", 1, ClassOK), at(3, "o2", 2, ClassOK)}, 0, 3},
		{"two instances at one epoch", []*op{at(1, "o1", 1, ClassOK), at(2, "o2", 1, ClassOK), at(3, "o2", 1, ClassOK)}, 2, 3},
		{"an instance back at an old epoch", []*op{at(1, "o1", 1, ClassOK), at(2, "o2", 2, ClassOK), at(3, "o1", 2, ClassOK)}, 1, 3},
		{"unacknowledged writes do not count", []*op{at(1, "o1", 1, ClassOK), at(2, "o2", 1, ClassUnknown), at(3, "o2", 1, ClassFailed)}, 0, 1},
		{"unknown commit epoch is not checked", []*op{at(1, "o1", 1, ClassOK), at(2, "o2", 0, ClassOK)}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newViolations()
			checked := checkEpochs(v, tt.ops)
			if got := v.counts[vSplitEpoch]; got != tt.want || checked != tt.checked {
				t.Fatalf("split-epoch %d, checked %d; want %d, %d:\n%s", got, checked, tt.want, tt.checked, v)
			}
			if v.total() != tt.want {
				t.Fatalf("other violations:\n%s", v)
			}
		})
	}
}
