package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/replmesh/replmesh/transport"
)

// fakeStatus is the registry of a fake deployment: the stores service
// (primary a and standby b, both served at addr) owning managers (auto by
// default) and t (with a pull override), and the products consumers p1
// (streaming, auto running push), p2 (in a full transfer, auto running
// pull) and p3 (in a transfer from an owner that announced no row count).
// x is appended to every name, address (but addr), state and reason: a
// registration with control characters in it.
func fakeStatus(addr, x string) transport.StatusResponse {
	now := time.Now().UnixMilli()
	standbyAddr := addr
	if x != "" {
		standbyAddr = "127.0.0.1:1" + x
	}
	tables := []transport.TableInfo{{Table: "managers", Mode: "auto", LogID: "L1", Epoch: 1, Head: 7}, {Table: "t" + x, LogID: "L1" + x, Epoch: 1, Head: 3}}
	sub := func(state, running string) transport.SubInfo {
		return transport.SubInfo{Service: "stores", Table: "managers", State: state + x, Running: running, Reason: "rates" + x}
	}
	p1, p2, p3 := sub("streaming", "push"), sub("transferring", "pull"), sub("transferring", "")
	p1.Seq, p1.StaleMs = 7, 120
	p2.Lag, p2.XferRows, p2.XferExpected, p2.XferBytes, p2.XferRate, p2.XferEtaMs = 7, 120000, 400000, 64<<20, 85300, 3000
	p3.Seq, p3.Lag, p3.XferRows, p3.XferRate = 5, 2, 1200, 950
	return transport.StatusResponse{
		Broker:  "b1" + x,
		Brokers: []transport.BrokerInfo{{Name: "b1" + x, Addr: "127.0.0.1:2" + x, State: "alive" + x}},
		Owners: []transport.ServiceOwner{{Service: "stores", Epoch: 1, Tables: tables,
			Primary:  transport.Endpoint{Instance: "a" + x, Addr: addr, Role: transport.RolePrimary},
			Standbys: []transport.Endpoint{{Instance: "b" + x, Addr: standbyAddr, Role: transport.RoleStandby}}}},
		Instances: []transport.InstanceInfo{
			{Service: "stores", Instance: "a" + x, Addr: addr, Role: transport.RolePrimary, Broker: "b1" + x, LastSeenMs: now, Tables: tables},
			{Service: "stores", Instance: "b" + x, Addr: standbyAddr, Role: transport.RoleStandby, Broker: "b1" + x, LastSeenMs: now, Tables: tables},
			{Service: "products", Instance: "p1" + x, Role: transport.RoleConsumer, Broker: "b1" + x, LastSeenMs: now, Subscriptions: []transport.SubInfo{p1}},
			{Service: "products", Instance: "p2" + x, Role: transport.RoleConsumer, Broker: "b1" + x, LastSeenMs: now, Subscriptions: []transport.SubInfo{p2}},
			{Service: "products", Instance: "p3" + x, Role: transport.RoleConsumer, Broker: "b1" + x, LastSeenMs: now, Subscriptions: []transport.SubInfo{p3}},
		},
		Overrides: map[string]string{"stores/t" + x: "pull"},
		Raft: &transport.RaftStatus{ID: 0xa1, State: "StateLeader", Term: 3, Leader: 0xa1, LeaderName: "b1" + x,
			Commit: 12, Applied: 12, ConfirmedMs: 40, Members: []transport.RaftMember{
				{ID: 0xa1, Name: "b1" + x, Addr: "127.0.0.1:2" + x}, {ID: 0xb2, Name: "b2", Addr: "127.0.0.1:3"}}},
		Refused: []transport.RefusedRegister{{Service: "stores", Instance: "a" + x, Addr: "127.0.0.1:4" + x,
			Holder: addr, AtMs: now - 2000, Count: 3}},
	}
}

// fakeRows are the rows of the fake managers table, in key order: text,
// msgpack and bytes; x goes into a key and a value.
func fakeRows(t *testing.T, x string) []transport.Row {
	return []transport.Row{
		{Key: []byte("bin"), Value: []byte{0, 0xff, 1}},
		{Key: []byte("k1"), Value: []byte("v1")},
		{Key: []byte("k2" + x), Value: []byte("v2" + x)},
		{Key: []byte("m1"), Value: mustMsgpack(t, fakeManager{"s1", "alice" + x, 3})},
	}
}

// fakeManager is the typed value of the fake table (a struct, so that its
// msgpack map keeps its order).
type fakeManager struct {
	Store string `msgpack:"store"`
	User  string `msgpack:"user"`
	N     int    `msgpack:"n"`
}

// fakeDeployment serves a fake owner of fakeRows (Keys pages of two) and a
// fake broker holding fakeStatus, and returns the -broker flag.
func fakeDeployment(t *testing.T, x string) string {
	t.Helper()
	rows := fakeRows(t, x)
	changes := make([]transport.Change, len(rows))
	for i, r := range rows {
		changes[i] = transport.Change{Seq: uint64(8 + i), Op: transport.OpPut, Key: r.Key, Value: r.Value, Time: 1_700_000_000_000_000_000, Epoch: 1, TxnEnd: true}
	}
	owner := tableOwner(rows, 2, changes)
	keys := owner.KeysFunc
	owner.KeysFunc = func(in *transport.KeysRequest) (*transport.KeysResponse, error) {
		if in.Table != "managers" {
			return nil, fmt.Errorf("%w: %q is not owned by stores/a%s", transport.ErrUnknownTable, in.Table, x)
		}
		return keys(in)
	}
	return "-broker=" + serveBroker(t, fakeStatus(serveOwner(t, owner), x))
}

// everyCommand is one run of every replctl command against fakeDeployment.
func everyCommand() [][]string {
	return [][]string{
		{"status"},
		{"tables"},
		{"consumers"},
		{"get", "stores/managers", "k1", "m1", "bin", "nope"},
		{"keys", "stores/managers"},
		{"keys", "stores/nosuch"},
		{"tail", "-n", "4", "stores/managers"},
		{"verify", "-wait", "0s", "stores/managers"},
		{"mode", "list"},
		{"mode", "set", "stores/managers", "push"},
		{"mode", "set", "stores/nosuch", "push"}, // warns, naming the service's tables
	}
}

// Every -o json document of every command has snake_case keys only
// (value_msgpack holds the table's own data and is not looked into).
func TestJSON_SnakeCaseEverywhere(t *testing.T) {
	br := fakeDeployment(t, "")
	for _, args := range everyCommand() {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := runCtl(t, append([]string{br, "-o", "json"}, args...)...)
			if r.code == exitUsage || r.code == exitError && args[1] != "stores/nosuch" {
				t.Fatalf("%v", r)
			}
			docs := []string{r.stdout}
			if args[0] == "tail" {
				docs = strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			}
			for _, d := range docs {
				if d == "" {
					continue
				}
				var v any
				if err := json.Unmarshal([]byte(d), &v); err != nil {
					t.Fatalf("not JSON: %v\n%s", err, d)
				}
				for _, k := range jsonKeys(v, "") {
					if strings.IndexFunc(k, unicode.IsUpper) >= 0 {
						t.Errorf("key %s is not snake_case", k)
					}
				}
			}
		})
	}
}

// jsonKeys returns the paths of every object key in v.
func jsonKeys(v any, path string) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			out = append(out, path+"."+k)
			if k != "value_msgpack" {
				out = append(out, jsonKeys(e, path+"."+k)...)
			}
		}
	case []any:
		for i, e := range v {
			out = append(out, jsonKeys(e, fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return out
}

// A registration (and rows) with ESC and BEL in names, addresses, states,
// reasons, errors, keys and values: no command lets either reach the
// terminal raw, in text or JSON; the text shows them escaped.
func TestOutput_EscapesControlCharacters(t *testing.T) {
	const x = "\x1b[31m\a"
	br := fakeDeployment(t, x)
	for _, args := range append(everyCommand(), []string{"get", "stores/managers", "k2" + x}) {
		for _, output := range []string{"text", "json"} {
			t.Run(output+" "+strings.Join(args, " "), func(t *testing.T) {
				r := runCtl(t, append([]string{br, "-o", output}, args...)...)
				if r.code == exitUsage {
					t.Fatalf("%v", r)
				}
				all := r.stdout + r.stderr
				if strings.ContainsAny(all, "\x1b\a") {
					t.Fatalf("raw ESC or BEL in the output:\n%q", all)
				}
				if args[0] == "mode" && args[1] == "set" {
					return // prints only what was asked, nothing registered
				}
				want := `\x1b[31m\a`
				if output == "json" && r.stdout != "" {
					want = `\u001b[31m\u0007`
				}
				if !strings.Contains(all, want) {
					t.Errorf("the output does not show %s:\n%s", want, all)
				}
			})
		}
	}
}

// consumers shows a full transfer's progress instead of its seq and lag,
// and the mode a subscription runs beside the one configured; status
// shows the running modes of each table; the JSON forms carry both.
func TestConsumers_TransferProgressAndRunningMode(t *testing.T) {
	br := fakeDeployment(t, "")
	r := runCtl(t, br, "consumers")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(r.stdout, "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines[f[0]] = l
		}
	}
	for _, tc := range []struct {
		consumer string
		want     []string // in this order
		not      string
	}{
		{"products/p1", []string{"auto -> push", " 7 ", "streaming"}, "transferring"},
		{"products/p2", []string{"auto -> pull", " - ", "transferring 120000/400000 30% 85k rows/s ETA 3s"}, "LAG"},
		{"products/p3", []string{"auto ", " 5 ", "transferring 1200 rows 950 rows/s"}, "%"},
	} {
		t.Run(tc.consumer, func(t *testing.T) {
			l, ok := lines[tc.consumer]
			if !ok {
				t.Fatalf("no row for %s:\n%s", tc.consumer, r.stdout)
			}
			rest := l
			for _, w := range tc.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("row %q lacks %q (in order %q)", l, w, tc.want)
				}
				rest = rest[i+len(w):]
			}
			if strings.Contains(l, tc.not) {
				t.Errorf("row %q has %q", l, tc.not)
			}
		})
	}

	var rows []consumerRow
	if r := runCtl(t, br, "-o", "json", "consumers"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &rows) != nil || len(rows) != 3 {
		t.Fatalf("consumers -o json: %v", r)
	}
	want := consumerRow{TransferRows: 120000, TransferExpected: 400000, TransferPercent: 30, TransferBytes: 64 << 20, TransferRate: 85300, TransferEtaMs: 3000}
	got := rows[1]
	if got.Instance != "p2" || got.Mode != "auto" || got.Running != "pull" || got.TransferRows != want.TransferRows ||
		got.TransferExpected != want.TransferExpected || got.TransferPercent != want.TransferPercent || got.TransferBytes != want.TransferBytes ||
		got.TransferRate != want.TransferRate || got.TransferEtaMs != want.TransferEtaMs {
		t.Errorf("p2: %+v", got)
	}
	if rows[0].TransferRows != 0 || rows[2].TransferExpected != 0 || rows[2].TransferPercent != 0 {
		t.Errorf("p1 %+v / p3 %+v: no progress or no percentage expected", rows[0], rows[2])
	}

	if out := runCtl(t, br, "status").stdout; !strings.Contains(out, "stores/managers  a      1      7     auto -> pull, push") {
		t.Errorf("status does not show the running modes of managers:\n%s", out)
	}
	var tables []tableRow
	if r := runCtl(t, br, "-o", "json", "tables"); json.Unmarshal([]byte(r.stdout), &tables) != nil ||
		fmt.Sprint(tables[0].RunningModes) != "[pull push]" || len(tables[1].RunningModes) != 0 {
		t.Errorf("tables -o json running modes: %+v", tables)
	}
}

func TestTransferProgressText(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    consumerRow
		want string
	}{
		{"known total, rate and ETA", consumerRow{State: "transferring", TransferRows: 120000, TransferExpected: 400000, TransferPercent: 30, TransferRate: 85300, TransferEtaMs: 3000},
			"transferring 120000/400000 30% 85k rows/s ETA 3s"},
		{"known total, nothing yet", consumerRow{State: "transferring", TransferRows: 0, TransferExpected: 10}, "transferring 0/10 0%"},
		{"unknown total, rate and ETA", consumerRow{State: "transferring", TransferRows: 5, TransferRate: 2_500_000, TransferEtaMs: 65_001}, "transferring 5 rows 2.5M rows/s ETA 1m6s"},
		{"unknown total, ETA only", consumerRow{State: "transferring", TransferRows: 5, TransferEtaMs: 10}, "transferring 5 rows ETA 1s"},
	} {
		t.Run("progress "+tc.name, func(t *testing.T) {
			if got := tc.r.progress(); got != tc.want {
				t.Errorf("progress of %+v = %q, want %q", tc.r, got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		done, expected uint64
		want           float64
	}{{1, 3, 33.3}, {120000, 400000, 30}, {5, 0, 0}, {11, 10, 100}} {
		t.Run(fmt.Sprintf("percent %d of %d", tc.done, tc.expected), func(t *testing.T) {
			if got := percent(tc.done, tc.expected); got != tc.want {
				t.Errorf("percent(%d, %d) = %v, want %v", tc.done, tc.expected, got, tc.want)
			}
		})
	}
}

// get and tail show msgpack values as JSON, text as text and other bytes
// as hex; -hex shows hex; get -raw writes the stored bytes.
func TestGetAndTail_Values(t *testing.T) {
	br := fakeDeployment(t, "")
	r := runCtl(t, br, "get", "stores/managers", "k1", "m1", "bin")
	for _, want := range []string{"k1   v1\n", `m1   {"store":"s1","user":"alice","n":3}` + "\n", "bin  0x00ff01\n"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("get lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := runCtl(t, br, "get", "-hex", "stores/managers", "m1"); !strings.Contains(r.stdout, "0x6d31  0x83a573746f7265a27331a475736572a5616c696365a16e03") {
		t.Errorf("get -hex:\n%s", r.stdout)
	}
	m1 := string(fakeRows(t, "")[3].Value)
	if r := runCtl(t, br, "get", "-raw", "stores/managers", "m1"); r.stdout != m1 {
		t.Errorf("get -raw: %q, want the stored %q", r.stdout, m1)
	}
	// -raw is no decoding: raw hex where the stored bytes cannot be
	// written as they are (several keys, JSON, a tail).
	if r := runCtl(t, br, "get", "-raw", "stores/managers", "m1", "k1"); !strings.Contains(r.stdout, "0x6d31  0x83a573746f7265a27331a475736572a5616c696365a16e03") || !strings.Contains(r.stdout, "0x6b31  0x7631") {
		t.Errorf("get -raw with two keys: %v", r)
	}
	var g getResult
	if r := runCtl(t, br, "-o", "json", "get", "-raw", "stores/managers", "m1"); json.Unmarshal([]byte(r.stdout), &g) != nil ||
		g.Values[0].ValueMsgpack != nil || *g.Values[0].ValueHex != "83a573746f7265a27331a475736572a5616c696365a16e03" {
		t.Errorf("get -raw -o json: %v", r)
	}
	if r := runCtl(t, br, "tail", "-raw", "-n", "4", "stores/managers"); !strings.Contains(r.stdout, "11 put 0x6d31 0x83a573746f7265a27331a475736572a5616c696365a16e03 ") {
		t.Errorf("tail -raw: %v", r)
	}
	g = getResult{}
	if r := runCtl(t, br, "-o", "json", "get", "stores/managers", "m1", "k1"); json.Unmarshal([]byte(r.stdout), &g) != nil ||
		compactJSON(g.Values[0].ValueMsgpack) != `{"store":"s1","user":"alice","n":3}` || g.Values[1].ValueMsgpack != nil || *g.Values[1].Value != "v1" {
		t.Errorf("get -o json: %v", r)
	}

	r = runCtl(t, br, "tail", "-n", "4", "stores/managers")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	want := []string{"8 put bin 0x00ff01 ", "9 put k1 v1 ", "10 put k2 v2 ", `11 put m1 {"store":"s1","user":"alice","n":3} `}
	if len(lines) != len(want) {
		t.Fatalf("tail: %v", r)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("tail line %d = %q, want prefix %q", i, lines[i], w)
		}
	}
	r = runCtl(t, br, "-o", "json", "tail", "-n", "4", "stores/managers")
	var cl changeLine
	if last := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")[3]; json.Unmarshal([]byte(last), &cl) != nil ||
		string(cl.ValueMsgpack) != `{"store":"s1","user":"alice","n":3}` {
		t.Errorf("tail -o json: %v", r)
	}
}

// keys lists the keys in order across pages, up to -limit, with a prefix;
// an unknown table and an owner without Keys give clear errors.
func TestKeys(t *testing.T) {
	br := fakeDeployment(t, "") // Keys pages of two
	all := []string{"bin", "k1", "k2", "m1"}
	for _, tc := range []struct {
		name  string
		args  []string
		want  []string
		more  bool
		pages int
	}{
		{"default limit", nil, all, false, 2},
		{"all", []string{"-limit", "0"}, all, false, 2},
		{"limit", []string{"-limit", "3"}, all[:3], true, 2},
		{"limit at the end", []string{"-limit", "4"}, all, false, 2},
		{"prefix", []string{"stores/managers", "k"}, all[1:3], false, 1},
		{"hex prefix", []string{"-key-hex", "stores/managers", "6b"}, all[1:3], false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{br, "keys"}, tc.args...)
			if len(tc.args) == 0 || !strings.HasPrefix(tc.args[len(tc.args)-2], "stores/") {
				args = append(args, "stores/managers")
			}
			r := runCtl(t, args...)
			if r.code != 0 || r.stdout != strings.Join(tc.want, "\n")+"\n" {
				t.Fatalf("keys: want %q, got %v", tc.want, r)
			}
			if got := strings.Contains(r.stderr, "more follow"); got != tc.more {
				t.Errorf("stderr %q: more=%v, want %v", r.stderr, got, tc.more)
			}
			var kr keysResult
			r = runCtl(t, append([]string{"-o", "json"}, args...)...)
			if r.code != 0 || json.Unmarshal([]byte(r.stdout), &kr) != nil {
				t.Fatalf("keys -o json: %v", r)
			}
			var got []string
			for _, k := range kr.Keys {
				got = append(got, *k.Key)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || kr.More != tc.more || kr.Pages != tc.pages || kr.Seq != 7 || kr.LastSeq != 7 ||
				kr.LogID != "L1" || kr.Instance != "a" {
				t.Errorf("keys -o json: %+v, want keys %q more %v pages %d", kr, tc.want, tc.more, tc.pages)
			}
		})
	}

	r := runCtl(t, br, "keys", "stores/nosuch")
	if r.code != exitError || !strings.Contains(r.stderr, `no such table: unknown table: "nosuch" is not owned by stores/a`) ||
		!strings.Contains(r.stderr, "(the tables of stores: managers, t)") {
		t.Errorf("unknown table: %v", r)
	}
	_, oldOwner := serveFake(t) // an owner without Keys
	st := fakeStatus(oldOwner, "")
	r = runCtl(t, "-broker="+serveBroker(t, st), "keys", "stores/managers")
	if r.code != exitError || !strings.Contains(r.stderr, "does not serve this call") {
		t.Errorf("owner without Keys: %v", r)
	}
	if r := runCtl(t, br, "keys", "-limit", "-1", "stores/managers"); r.code != exitUsage || !strings.Contains(r.stderr, "-limit must be >= 0") {
		t.Errorf("negative limit: %v", r)
	}
}

func compactJSON(b []byte) string {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return err.Error()
	}
	return out.String()
}

// status shows the answering broker's Raft view (its role, term, commit
// and applied index, the voters with the leader marked) and the Registers
// it refused because the instance name had a live holder (who tried,
// from where, who holds it, when); the JSON form carries both.
func TestStatus_RaftAndRefusedRegisters(t *testing.T) {
	br := fakeDeployment(t, "")
	r := runCtl(t, br, "status")
	if r.code != 0 {
		t.Fatalf("%v", r)
	}
	lines := strings.Split(r.stdout, "\n")
	// find returns the first line starting with prefix after the line
	// starting with section.
	find := func(section, prefix string) string {
		in := false
		for _, l := range lines {
			if in && strings.HasPrefix(l, prefix) {
				return l
			}
			in = in || strings.HasPrefix(l, section)
		}
		t.Fatalf("no line starting %q after %q in:\n%s", prefix, section, r.stdout)
		return ""
	}
	for _, tc := range []struct {
		section, prefix string
		want            []string
	}{
		{"", "RAFT (", []string{"this broker: leader", "id a1", "term 3", "commit 12", "applied 12", "quorum confirmed 40ms ago"}},
		{"RAFT (", "leader:", []string{"b1"}},
		{"RAFT (", "b1 ", []string{"a1", "127.0.0.1:2", "leader (this broker)"}},
		{"RAFT (", "b2 ", []string{"b2", "127.0.0.1:3", "follower"}},
		{"", "REFUSED REGISTERS", nil},
		{"REFUSED REGISTERS", "stores ", []string{" a ", "127.0.0.1:4", "2.0s ago", " 3"}},
	} {
		l := find(tc.section, tc.prefix)
		for _, w := range tc.want {
			if !strings.Contains(l, w) {
				t.Errorf("line %q lacks %q", l, w)
			}
		}
	}

	var st transport.StatusResponse
	if r := runCtl(t, br, "-o", "json", "status"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("status -o json: %v", r)
	}
	if st.Raft == nil || st.Raft.LeaderName != "b1" || len(st.Raft.Members) != 2 || len(st.Refused) != 1 || st.Refused[0].Count != 3 {
		t.Fatalf("status -o json: raft %+v refused %+v", st.Raft, st.Refused)
	}
	if l := find("REFUSED REGISTERS", "stores "); st.Refused[0].Holder == "" || !strings.Contains(l, st.Refused[0].Holder) {
		t.Errorf("refused row %q lacks the holder's address %q", l, st.Refused[0].Holder)
	}

	// A broker that sees no leader says so.
	st.Raft.Leader, st.Raft.LeaderName, st.Raft.State = 0, "", "StateFollower"
	st.Raft.JoinRefused = "instance in use: broker name \"b2\" belongs to a live voter"
	var buf bytes.Buffer
	printRaft(&buf, st.Raft)
	if out := buf.String(); !strings.Contains(out, "this broker: follower") || !strings.Contains(out, "leader: (none") ||
		!strings.Contains(out, "refuses to add it: instance in use: broker name \"b2\" belongs to a live voter") {
		t.Errorf("no leader, join refused:\n%s", out)
	}
}
