package broker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/replmesh/replmesh/internal/browsertest"
	"github.com/replmesh/replmesh/transport"
)

// serveStatus serves b.StatusHandler on 127.0.0.1 and returns its base URL.
func serveStatus(t testing.TB, b *Broker) string { return browsertest.Serve(t, b.StatusHandler()) }

func httpGet(t testing.TB, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, string(body)
}

// statusFixture registers an owner service (a primary and a standby) and a
// consumer with two subscriptions, one in a full transfer, and sets a mode
// override.
func statusFixture(t *testing.T, b *Broker) (primary, consumer *fakeComp) {
	t.Helper()
	tables := []transport.TableInfo{{Table: "managers", Mode: "pull", LogID: "log1", Epoch: 1, Head: 40},
		{Table: "stores", LogID: "log2", Epoch: 1, Head: 7}}
	primary = mustConnect(t, b.GRPCAddr(), transport.Register{Service: "stores", Instance: "s1", Addr: "127.0.0.1:7001", Owner: true, Tables: tables})
	mustConnect(t, b.GRPCAddr(), transport.Register{Service: "stores", Instance: "s2", Addr: "127.0.0.1:7002", Owner: true, Tables: tables})
	consumer = mustConnect(t, b.GRPCAddr(), transport.Register{Service: "products", Instance: "p1",
		Subscriptions: []transport.SubInfo{
			{Service: "stores", Table: "managers", Mode: "auto", Running: "push", Seq: 0, State: "transferring",
				XferRows: 2500, XferExpected: 10000, XferBytes: 3 << 20, XferRate: 1250, XferEtaMs: 6000},
			{Service: "stores", Table: "stores", Seq: 5, Lag: 2, StaleMs: 1500, State: "streaming", Running: "pull"},
		}})
	// A second process with s1's name: refused, and listed.
	dup := &fakeComp{t: t, reg: transport.Register{Version: transport.ProtocolVersion, Service: "stores", Instance: "s1",
		Addr: "127.0.0.1:7009", Owner: true, Tables: tables}}
	if err := dup.openWith(b.GRPCAddr(), &transport.SessionRequest{Kind: transport.SessionRegister, Register: &dup.reg}); !errors.Is(err, transport.ErrInstanceInUse) {
		t.Fatalf("a second stores/s1: %v, want ErrInstanceInUse", err)
	}
	if _, err := b.SetMode(ctxT(t, waitLong), &transport.SetModeRequest{Version: transport.ProtocolVersion,
		Service: "stores", Table: "stores", Mode: "push"}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, waitLong, "fixture registered", func() bool {
		st := status(t, b)
		o := findOwner(st.Owners, "stores")
		return o != nil && o.Primary.Instance != "" && len(o.Standbys) == 1 && findInstance(st, "products", "p1") != nil
	})
	return primary, consumer
}

var snakeCase = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// snakeKeys checks every key of a decoded JSON tree, except the keys of
// the maps whose keys are data (overrides: "service/table").
func snakeKeys(t *testing.T, path string, v any, seen map[string]bool) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if !snakeCase.MatchString(k) {
				t.Errorf("%s: key %q is not snake_case", path, k)
			}
			seen[k] = true
			if k == "overrides" {
				continue
			}
			snakeKeys(t, path+"."+k, x, seen)
		}
	case []any:
		for i, x := range v {
			snakeKeys(t, fmt.Sprintf("%s[%d]", path, i), x, seen)
		}
	}
}

func TestStatusHandler_JSONKeysAreSnakeCase(t *testing.T) {
	b := startBroker(t, "b1", nil, nil)
	statusFixture(t, b)
	base := serveStatus(t, b)

	resp, body := httpGet(t, base+"/api/status")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/status: %s\n%s", resp.Status, body)
	}
	if got, want := resp.Header.Get("Content-Type"), "application/json"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	var tree map[string]any
	if err := json.Unmarshal([]byte(body), &tree); err != nil {
		t.Fatalf("decode: %v\n%s", err, body)
	}
	seen := map[string]bool{}
	snakeKeys(t, "$", tree, seen)
	// The walk reached the nested levels: owners' tables and endpoints,
	// instances' subscriptions with their transfer progress.
	for _, k := range []string{"broker", "brokers", "owners", "primary", "standbys", "tables", "head", "log_id",
		"instances", "last_seen_ms", "subscriptions", "stale_ms", "running", "transfer_rows", "transfer_rows_expected",
		"transfer_bytes", "transfer_rows_per_sec", "transfer_eta_ms", "overrides",
		"raft", "leader_name", "term", "commit", "applied", "members", "confirmed_ms", "refused", "holder", "at_ms", "count"} {
		if !seen[k] {
			t.Errorf("no key %q anywhere in /api/status:\n%s", k, body)
		}
	}
	// The values survive the trip: the transfer in progress, by name.
	var st transport.StatusResponse
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	p1 := findInstance(&st, "products", "p1")
	if p1 == nil || len(p1.Subscriptions) != 2 {
		t.Fatalf("products/p1 in /api/status: %+v", p1)
	}
	if got := p1.Subscriptions[0]; got.XferRows != 2500 || got.XferExpected != 10000 || got.XferEtaMs != 6000 || got.Running != "push" {
		t.Errorf("subscription = %+v", got)
	}
	// The raft view and the refused attempt survive it too.
	if st.Raft == nil || st.Raft.LeaderName != "b1" || st.Raft.State != "StateLeader" || len(st.Raft.Members) != 1 ||
		st.Raft.Members[0].ID != st.Raft.ID || st.Raft.Applied == 0 || st.Raft.Commit < st.Raft.Applied {
		t.Errorf("raft = %+v", st.Raft)
	}
	if len(st.Refused) != 1 || st.Refused[0].Instance != "s1" || st.Refused[0].Addr != "127.0.0.1:7009" ||
		st.Refused[0].Holder != "127.0.0.1:7001" || st.Refused[0].Count != 1 || st.Refused[0].AtMs == 0 {
		t.Errorf("refused = %+v", st.Refused)
	}
}

func TestStatusHandler_ServesTheStaticPage(t *testing.T) {
	b := startBroker(t, "b1", nil, nil)
	base := serveStatus(t, b)

	resp, body := httpGet(t, base+"/")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /: %s", resp.Status)
	}
	if got, want := resp.Header.Get("Content-Type"), "text/html; charset=utf-8"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'sha256-", "connect-src 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	// The page is the data's client, not a rendering of it: no meta
	// refresh, no server-side values, and it fetches api/status.
	if strings.Contains(body, `http-equiv="refresh"`) {
		t.Error("the page reloads itself (meta refresh)")
	}
	if !strings.Contains(body, `fetch("api/status"`) {
		t.Error("the page does not fetch api/status")
	}
	if strings.Contains(body, "innerHTML") || strings.Contains(body, "insertAdjacentHTML") || strings.Contains(body, "document.write") {
		t.Error("the page writes markup from strings; values must go in as text")
	}
	if resp, _ := httpGet(t, base+"/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope: %s, want 404", resp.Status)
	}
}

// The page in a real browser, against a broker fed by fake components:
// every part of the registry is shown, values with markup and control
// characters appear as text, and the page follows the registry (a
// transfer's progress, then its end) without reloading.
func TestStatusPage_Browser(t *testing.T) {
	br := browsertest.Start(t)
	b := startBroker(t, "b1", nil, nil)
	primary, consumer := statusFixture(t, b)
	base := serveStatus(t, b)

	// A registration that tries markup and terminal escapes.
	mustConnect(t, b.GRPCAddr(), transport.Register{Service: "evil", Instance: "e1",
		Addr:          `<img src=x onerror="window.pwned=1">:1`,
		Subscriptions: []transport.SubInfo{{Service: "stores", Table: "stores", State: "<b>bold</b>\x1b[31m\u202e", Reason: "<script>window.pwned=2</script>"}}})

	br.Open(base + "/")
	waitFor := br.WaitFor

	// cell is an expression for the text of the cell of class cls in the
	// subscription row of consumer and table ("" when there is none).
	const subRow = `(function(consumer, table) {
		for (const tr of document.querySelectorAll("#subscriptions tr")) {
			const c = tr.querySelector(".consumer"), tb = tr.querySelector(".table");
			if (c && tb && c.textContent === consumer && tb.textContent === table) return tr;
		}
		return null;
	})`
	cell := func(consumer, table, cls string) string {
		return fmt.Sprintf(`(%s(%q, %q)?.querySelector(%q)?.textContent ?? "")`, subRow, consumer, table, "."+cls)
	}

	waitFor("the broker", `document.querySelector("#brokers .name")?.textContent === "b1"`)
	waitFor("the service with primary, epoch, standby and heads", `(function() {
		const tr = document.querySelector("#services tr");
		return tr && tr.querySelector(".service").textContent === "stores" &&
			tr.querySelector(".primary").textContent.includes("s1") &&
			tr.querySelector(".standbys").textContent.includes("s2") &&
			tr.querySelector(".epoch").textContent !== "" &&
			tr.querySelector(".tables").textContent.includes("managers 40");
	})()`)
	// Configured and running mode side by side, by precedence.
	waitFor("the subscription's own mode and the running one", cell("products/p1", "stores/managers", "mode")+` === "auto → push"`)
	waitFor("the override winning over the owner's default", cell("products/p1", "stores/stores", "mode")+` === "push (override) → pull"`)
	waitFor("lag", cell("products/p1", "stores/stores", "behind")+` === "2" && `+cell("products/p1", "stores/stores", "stale")+` === "1.5s"`)
	waitFor("the transfer's progress", cell("products/p1", "stores/managers", "xfer")+
		` === "2,500 / 10,000 rows · 25.0% · 1,250 rows/s · ETA 6.0s · 3.0 MiB"`)

	// The raft view and the refused second s1.
	waitFor("this broker leading the raft group", `document.querySelector("#raft .raft-role")?.textContent === "leader" &&
		document.querySelector("#raft .raft-leader")?.textContent === "b1" &&
		document.querySelector("#voters .role")?.textContent === "leader (this broker)"`)
	waitFor("the refused registration", `(function() {
		const tr = document.querySelector("#refused tr");
		return tr && tr.querySelector(".instance")?.textContent === "s1" && tr.querySelector(".addr")?.textContent === "127.0.0.1:7009" &&
			tr.querySelector(".holder")?.textContent === "127.0.0.1:7001" && tr.querySelector(".count")?.textContent === "1";
	})()`)

	// Markup and control characters arrive as text.
	waitFor("the hostile values as text", cell("evil/e1", "stores/stores", "state")+` === "<b>bold</b>\\u001b[31m\\u202e"`)
	if got := br.Text(`document.querySelectorAll("img").length + "/" + document.scripts.length + "/" +
		[...document.querySelectorAll("b")].filter(e => e.textContent === "bold").length + "/" + String(window.pwned)`); got != "0/1/0/undefined" {
		t.Fatalf("markup from the registry became elements or ran: %q (images/scripts/bold/pwned)", got)
	}
	waitFor("the hostile address as text", `document.querySelector("#instances").textContent.includes('<img src=x onerror="window.pwned=1">:1')`)

	// The registry moves on; the page follows in place.
	consumer.update(nil, []transport.SubInfo{
		{Service: "stores", Table: "managers", Mode: "auto", Running: "push", State: "transferring",
			XferRows: 7500, XferExpected: 10000, XferBytes: 9 << 20, XferRate: 2500, XferEtaMs: 1000},
		{Service: "stores", Table: "stores", Seq: 7, State: "streaming", Running: "pull"},
	})
	waitFor("the transfer's progress moving", cell("products/p1", "stores/managers", "xfer-pct")+` === "75.0%"`)
	consumer.update(nil, []transport.SubInfo{
		{Service: "stores", Table: "managers", Mode: "auto", Running: "pull", Seq: 40, State: "streaming"},
		{Service: "stores", Table: "stores", Seq: 7, State: "streaming", Running: "pull"},
	})
	primary.update([]transport.TableInfo{{Table: "managers", Mode: "pull", LogID: "log1", Epoch: 1, Head: 45},
		{Table: "stores", LogID: "log2", Epoch: 1, Head: 7}}, nil)
	waitFor("the transfer's end", cell("products/p1", "stores/managers", "state")+` === "streaming" && `+
		cell("products/p1", "stores/managers", "xfer")+` === "" && `+cell("products/p1", "stores/managers", "mode")+` === "auto → pull"`)
	waitFor("the new head and lag", cell("products/p1", "stores/managers", "head")+` === "45" && `+
		cell("products/p1", "stores/managers", "behind")+` === "5"`)

	if br.Reloaded() {
		t.Fatal("the page reloaded; it must update in place")
	}
	br.Check()
}
