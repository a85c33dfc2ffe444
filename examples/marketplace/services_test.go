package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/replmesh/replmesh/modes"
)

// The services as real processes: cmd/replbroker, cmd/stores and
// cmd/products built and run on free ports, driven over HTTP.

// svcRaceBuild: under -race the stores and products binaries are built
// with -race too (services_race_test.go); the broker is not.
var svcRaceBuild bool

// serviceBinaries builds replbroker, stores and products once per test
// run into a temporary directory (bins) and returns it.
func serviceBinaries(t *testing.T) string {
	t.Helper()
	start := time.Now()
	services := []string{"./cmd/stores", "./cmd/products"}
	if svcRaceBuild {
		services = append([]string{"-race"}, services...)
	}
	dir := bins.Build(t, []string{"../../cmd/replbroker"}, services)
	t.Logf("built replbroker, stores, products (race=%v) in %s", svcRaceBuild, time.Since(start).Round(time.Millisecond))
	return dir
}

// proc is one running service process.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has exited and its output is read

	mu      sync.Mutex
	logs    bytes.Buffer
	fields  map[string]any // the "... serving" log record
	exitErr error
}

// startProc runs bin with args (JSON logs on stderr) and waits for its
// "<what> serving" log record. The process is stopped (SIGTERM, then
// SIGKILL after 15s) when the test ends; its logs are printed if the test
// failed.
func startProc(t *testing.T, name, bin, what string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	if svcRaceBuild {
		p.cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=50 halt_on_error=1")
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	serving := make(chan map[string]any, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.logs.Write(sc.Bytes())
			p.logs.WriteByte('\n')
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == what+" serving" {
				serving <- rec
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		err := p.cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			p.mu.Lock()
			t.Logf("---- %s log:\n%s", p.name, p.logs.String())
			p.mu.Unlock()
		}
		if strings.Contains(p.log(), "DATA RACE") {
			t.Errorf("%s: the race detector fired (see its log)", p.name)
		}
	})
	select {
	case rec := <-serving:
		p.fields = rec
		return p
	case <-p.done:
		t.Fatalf("%s exited before serving: %v\n%s", name, p.exitErr, p.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start in 30s:\n%s", name, p.log())
	}
	return nil
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// field is a string field of the serving record.
func (p *proc) field(k string) string { s, _ := p.fields[k].(string); return s }

// url is the base URL of the process's HTTP API.
func (p *proc) url() string { return "http://" + p.field("http") }

// stop sends SIGTERM and waits (SIGKILL after 15s); it returns the exit
// error (nil: exit 0).
func (p *proc) stop(t *testing.T) error {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			t.Errorf("%s did not stop in 15s after SIGTERM: killed", p.name)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s still running 15s after SIGKILL", p.name)
	}
}

// client talks to the services; no keep-alive, so no connection outlives
// a call (goleak).
var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// answer is an HTTP answer with its JSON body.
type answer struct {
	code int
	body map[string]any
	raw  string
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }

func (a answer) num(k string) uint64 { f, _ := a.body[k].(float64); return uint64(f) }

// decision is the "decision" object of a products answer.
func (a answer) decision() map[string]any { d, _ := a.body["decision"].(map[string]any); return d }

// call sends method url with body (JSON-encoded unless nil).
func call(t *testing.T, method, url string, body any) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	a, err := tryCall(method, url, rd)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return a
}

func tryCall(method, url string, body io.Reader) (answer, error) {
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	a := answer{code: resp.StatusCode, raw: string(b)}
	if len(b) > 0 && b[0] == '{' {
		if err := json.Unmarshal(b, &a.body); err != nil {
			return a, fmt.Errorf("body is not JSON: %v: %s", err, b)
		}
	}
	return a, nil
}

// expectCode calls and checks the status code.
func expectCode(t *testing.T, want int, method, url string, body any) answer {
	t.Helper()
	a := call(t, method, url, body)
	if a.code != want {
		t.Fatalf("%s %s %v: HTTP %d, want %d: %s", method, url, body, a.code, want, a.raw)
	}
	return a
}

// eventually polls cond every millisecond until it holds or d runs out.
func eventually(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s; last: %s", d, what, last)
		}
		<-tick.C
	}
}

// statusIs waits until GET /status of p answers with role and, when ready,
// "ready": true.
func statusIs(t *testing.T, p *proc, role string, ready bool) answer {
	t.Helper()
	var a answer
	eventually(t, 20*time.Second, p.name+" is "+role, func() (bool, string) {
		var err error
		a, err = tryCall("GET", p.url()+"/status", nil)
		if err != nil {
			return false, err.Error()
		}
		r, _ := a.body["ready"].(bool)
		return a.code == 200 && a.str("role") == role && (!ready || r), a.raw
	})
	return a
}

// replicaStatus returns the /status entry of p's replica of table.
func replicaStatus(t *testing.T, p *proc, table string) map[string]any {
	t.Helper()
	a := expectCode(t, 200, "GET", p.url()+"/status", nil)
	reps, _ := a.body["replicas"].([]any)
	for _, r := range reps {
		if m, _ := r.(map[string]any); m["table"] == table {
			return m
		}
	}
	t.Fatalf("%s /status has no replica of %s: %s", p.name, table, a.raw)
	return nil
}

func authorizeURL(p *proc, store, user string) string {
	return p.url() + "/authorize?store=" + store + "&user=" + user
}

func addProduct(user, name string, waitFor map[string]any) map[string]any {
	b := map[string]any{"user": user, "name": name}
	if waitFor != nil {
		b["wait_for"] = waitFor
	}
	return b
}

// commitOf is the "wait_for" value of a stores write's answer.
func commitOf(a answer) map[string]any {
	return map[string]any{"table": a.str("table"), "seq": a.num("seq")}
}

// TestServices runs the marketplace as processes: a broker, a stores
// primary and standby (min_sync_standbys 1) and two products instances,
// every one started with config/modes.yaml, and checks decisions over
// HTTP, the standby's refusal, the revocation latency to both products
// instances, and that products goes on deciding from its replica once
// stores and the broker are SIGKILLed.
func TestServices(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs five processes; skipped under -short")
	}
	start := time.Now()
	bin := serviceBinaries(t)
	modesFile := filepath.Join("config", "modes.yaml")
	dir := t.TempDir()

	brk := startProc(t, "broker", filepath.Join(bin, "replbroker"), "replbroker",
		"-name", "broker-1", "-grpc", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-http", "off", "-log-format", "json",
		"-gossip-profile", "local", "-lease", "1s", "-heartbeat", "200ms", "-modes", modesFile)
	service := func(name, what string, extra ...string) *proc {
		args := append([]string{"-instance", name, "-listen", "127.0.0.1:0", "-http", "127.0.0.1:0",
			"-data", filepath.Join(dir, name), "-brokers", brk.field("grpc"), "-modes", modesFile, "-log-format", "json"}, extra...)
		return startProc(t, name, filepath.Join(bin, what), what, args...)
	}

	// products-1 comes first: with no stores yet, it cannot decide.
	p1 := service("products-1", "products")
	a := expectCode(t, 503, "POST", p1.url()+"/stores/S1/products", addProduct("alice", "desk lamp", nil))
	if !strings.Contains(a.str("error"), "first copy") {
		t.Errorf("not-ready answer: %s", a.raw)
	}
	expectCode(t, 503, "GET", authorizeURL(p1, "S1", "alice"), nil)

	s1 := service("stores-1", "stores", "-min-sync-standbys", "1")
	statusIs(t, s1, "primary", false)
	s2 := service("stores-2", "stores", "-min-sync-standbys", "1")
	statusIs(t, s2, "standby", false)
	statusIs(t, p1, "primary", true)
	p2 := service("products-2", "products")
	statusIs(t, p2, "standby", true)
	t.Logf("5 processes up in %s (build included)", time.Since(start).Round(time.Millisecond))

	t.Run("Decisions", func(t *testing.T) {
		a := expectCode(t, 201, "POST", s1.url()+"/stores", map[string]any{"id": "S1", "name": "Lamps & Co"})
		if a.str("table") != "stores" || a.num("seq") == 0 {
			t.Fatalf("create store answered %s, want a commit {table: stores, seq}", a.raw)
		}
		expectCode(t, 409, "POST", s1.url()+"/stores", map[string]any{"id": "S1", "name": "again"})
		expectCode(t, 404, "POST", s1.url()+"/stores/S9/managers", map[string]any{"user": "alice"})
		expectCode(t, 400, "POST", s1.url()+"/stores", map[string]any{"id": "a/b", "name": "slash"})
		alice := commitOf(expectCode(t, 201, "POST", s1.url()+"/stores/S1/managers", map[string]any{"user": "alice"}))
		bob := commitOf(expectCode(t, 201, "POST", s1.url()+"/stores/S1/managers", map[string]any{"user": "bob"}))
		if alice["table"] != "store_managers" {
			t.Fatalf("add manager answered commit %v", alice)
		}

		// alice on the products primary: allowed once the replica holds
		// her commit (wait_for), and the product is written.
		a = expectCode(t, 201, "POST", p1.url()+"/stores/S1/products", addProduct("alice", "desk lamp", alice))
		if d := a.decision(); d["allowed"] != true || d["managers_seq"].(float64) < float64(alice["seq"].(uint64)) {
			t.Errorf("allowed decision %v, want allowed at managers seq >= %v", d, alice["seq"])
		}
		// On the products standby the decision is the same, but only the
		// primary writes products: 503 naming it.
		a = expectCode(t, 503, "POST", p2.url()+"/stores/S1/products", addProduct("alice", "desk lamp", bob))
		if !strings.Contains(a.str("error"), "products-1") || a.decision()["allowed"] != true {
			t.Errorf("allowed POST on the products standby: %s, want 503 naming products-1 with the allowed decision", a.raw)
		}
		expectCode(t, 200, "GET", authorizeURL(p2, "S1", "alice"), nil)
		// carol manages nothing: 403 with the reason, on both.
		for _, p := range []*proc{p1, p2} {
			a = expectCode(t, 403, "POST", p.url()+"/stores/S1/products", addProduct("carol", "bicycle", bob))
			if got, want := a.str("error"), "carol is not a manager of store S1"; got != want {
				t.Errorf("%s denial: %q, want %q", p.name, got, want)
			}
			a = expectCode(t, 403, "POST", p.url()+"/stores/S7/products", addProduct("carol", "bicycle", nil))
			if got, want := a.str("error"), "store S7 does not exist"; got != want {
				t.Errorf("%s denial: %q, want %q", p.name, got, want)
			}
		}
		ps := call(t, "GET", p1.url()+"/stores/S1/products", nil)
		if ps.code != 200 || strings.Count(ps.raw, `"added_by": "alice"`) != 1 {
			t.Errorf("products of S1: %d %s, want alice's one product", ps.code, ps.raw)
		}
	})

	t.Run("StandbyRefusesWrites", func(t *testing.T) {
		for _, w := range []struct {
			name         string
			method, path string
			body         any
		}{
			{"create store", "POST", "/stores", map[string]any{"id": "S2", "name": "Fans"}},
			{"add manager", "POST", "/stores/S1/managers", map[string]any{"user": "mallory"}},
			{"revoke manager", "DELETE", "/stores/S1/managers/alice", nil},
		} {
			t.Run(w.name, func(t *testing.T) {
				a := expectCode(t, 503, w.method, s2.url()+w.path, w.body)
				if e := a.str("error"); !strings.Contains(e, "not primary") || !strings.Contains(e, "stores-1") {
					t.Errorf("%s %s on the standby: %q, want not primary naming stores-1", w.method, w.path, e)
				}
			})
		}
		// The standby's copy equals the primary's.
		h1, h2 := call(t, "GET", s1.url()+"/status", nil), call(t, "GET", s2.url()+"/status", nil)
		if fmt.Sprint(h1.body["tables"]) != fmt.Sprint(h2.body["tables"]) {
			t.Errorf("tables differ: primary %v, standby %v", h1.body["tables"], h2.body["tables"])
		}
	})

	t.Run("RevocationReachesBothProducts", func(t *testing.T) {
		for _, p := range []*proc{p1, p2} {
			eventually(t, 10*time.Second, p.name+" allows alice", func() (bool, string) {
				a, err := tryCall("GET", authorizeURL(p, "S1", "alice"), nil)
				return err == nil && a.code == 200, fmt.Sprint(a.raw, err)
			})
		}
		a := expectCode(t, 200, "DELETE", s1.url()+"/stores/S1/managers/alice", nil)
		acked := time.Now()
		var wg sync.WaitGroup
		took := make([]time.Duration, 2)
		errs := make([]error, 2)
		for i, p := range []*proc{p1, p2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				deadline := acked.Add(30 * time.Second)
				tick := time.NewTicker(200 * time.Microsecond)
				defer tick.Stop()
				for ; ; <-tick.C {
					a, err := tryCall("GET", authorizeURL(p, "S1", "alice"), nil)
					if err == nil && a.code == 403 {
						took[i] = time.Since(acked)
						return
					}
					if time.Now().After(deadline) {
						errs[i] = fmt.Errorf("%s still answers %d %s %v 30s after the revoke", p.name, a.code, a.raw, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		t.Logf("revocation latency (stores 200 on revoke -> products 403): products-1 %s, products-2 %s, both %s",
			took[0].Round(time.Microsecond), took[1].Round(time.Microsecond), max(took[0], took[1]).Round(time.Microsecond))
		for _, p := range []*proc{p1, p2} {
			d := expectCode(t, 403, "POST", p.url()+"/stores/S1/products", addProduct("alice", "lava lamp", commitOf(a)))
			if got := d.decision()["managers_seq"].(float64); uint64(got) < a.num("seq") {
				t.Errorf("%s denied at managers seq %v, before the revoke's %d", p.name, got, a.num("seq"))
			}
		}
	})

	t.Run("DecidesWithStoresAndBrokerDown", func(t *testing.T) {
		before := replicaStatus(t, p1, "store_managers")
		s2.kill(t)
		s1.kill(t)
		brk.kill(t)
		for _, p := range []*proc{p1, p2} {
			eventually(t, 15*time.Second, p.name+"'s replica notices stores is gone", func() (bool, string) {
				r := replicaStatus(t, p, "store_managers")
				return r["state"] == "connecting" && r["staleness_seconds"].(float64) > 0, fmt.Sprint(r)
			})
		}
		// bob still manages S1: the products primary still writes.
		a := expectCode(t, 201, "POST", p1.url()+"/stores/S1/products", addProduct("bob", "floor lamp", nil))
		if d := a.decision(); d["allowed"] != true || d["staleness"] == "0s" {
			t.Errorf("decision while stores is down: %v, want allowed with a staleness", d)
		}
		expectCode(t, 200, "GET", authorizeURL(p2, "S1", "bob"), nil)
		for _, p := range []*proc{p1, p2} {
			a = expectCode(t, 403, "POST", p.url()+"/stores/S1/products", addProduct("alice", "night lamp", nil))
			if a.str("error") != "alice is not a manager of store S1" {
				t.Errorf("%s: %s", p.name, a.raw)
			}
		}
		after := replicaStatus(t, p1, "store_managers")
		if after["seq"] != before["seq"] || after["lag_seqs"].(float64) != 0 {
			t.Errorf("replica moved while stores was down: before %v, after %v", before, after)
		}
		t.Logf("products-1 store_managers replica with stores and broker down: state=%v seq=%v lag=%v staleness=%v",
			after["state"], after["seq"], after["lag_seqs"], after["staleness"])
	})

	// A graceful stop exits 0.
	for _, p := range []*proc{p2, p1} {
		if err := p.stop(t); err != nil {
			t.Errorf("%s after SIGTERM: %v, want exit 0", p.name, err)
		}
		if !strings.Contains(p.log(), `"msg":"stopped"`) {
			t.Errorf("%s did not log its stop", p.name)
		}
	}
	t.Logf("total %s", time.Since(start).Round(time.Millisecond))
}

// The mode file every process of the script and the test starts from loads
// and names the stores tables.
func TestModesFile(t *testing.T) {
	c, err := modes.Load(filepath.Join("config", "modes.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"stores/stores", "stores/store_managers", "products/products"} {
		if _, ok := c.Lookup(table); !ok {
			t.Errorf("config/modes.yaml has no entry for %s", table)
		}
	}
	if tc, _ := c.Lookup("stores/store_managers"); tc == nil || tc.Mode != modes.Push {
		t.Errorf("stores/store_managers: %v, want push (revocations must arrive at once)", tc)
	}
}
