package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// bins holds the binary built for the tests; removed when they end.
var bins testutil.BinDir

func TestMain(m *testing.M) { bins.Main(m, "replbroker-test") }

// binary builds replbroker once (per test run) into a temporary directory.
func binary(t *testing.T) string {
	t.Helper()
	return filepath.Join(bins.Build(t, []string{"."}), "replbroker")
}

// proc is a running replbroker.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	mu     sync.Mutex
	stderr strings.Builder
	done   chan struct{}
	err    error // from Wait, once done is closed
	// from the "replbroker serving" log line
	GRPC, Gossip, HTTP, Name, Lease string
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	p := startNoWait(t, args...)
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.done
				t.Fatalf("replbroker exited before serving (%v):\n%s", p.err, p.log())
			}
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "replbroker serving" {
				continue
			}
			p.GRPC, _ = rec["grpc"].(string)
			p.Gossip, _ = rec["gossip"].(string)
			p.HTTP, _ = rec["http"].(string)
			p.Name, _ = rec["name"].(string)
			p.Lease, _ = rec["lease"].(string)
			return p
		case <-deadline:
			t.Fatalf("replbroker did not report serving:\n%s", p.log())
		}
	}
}

func startNoWait(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// stop sends SIGTERM and checks that the process exits 0 within d.
func (p *proc) stop(d time.Duration) {
	p.t.Helper()
	p.signal(syscall.SIGTERM)
	p.stopped(d)
}

// signal sends sig to the process, which must still be running.
func (p *proc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// stopped checks that the process, already signalled, exits 0 within d.
// It sends nothing: a second signal would race the exit (and its reap,
// which makes Signal fail with "process already finished").
func (p *proc) stopped(d time.Duration) {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("replbroker did not exit within %s of SIGTERM:\n%s", d, p.log())
	}
	if p.err != nil {
		p.t.Fatalf("replbroker exited with %v after SIGTERM:\n%s", p.err, p.log())
	}
}

// wait waits for the process to exit (with an error, for bad configs).
func (p *proc) wait(d time.Duration) error {
	p.t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.t.Fatalf("replbroker still running after %s:\n%s", d, p.log())
		return nil
	}
}

func local(name string, extra ...string) []string {
	return append([]string{"-name", name, "-grpc", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-http", "127.0.0.1:0",
		"-log-format", "json", "-gossip-profile", "local"}, extra...)
}

func apiStatus(t *testing.T, httpAddr string) *transport.StatusResponse {
	t.Helper()
	var st transport.StatusResponse
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/api/status")
		if err == nil {
			err = func() error {
				defer resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return errors.New(resp.Status)
				}
				return json.NewDecoder(resp.Body).Decode(&st)
			}()
			if err == nil {
				return &st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /api/status: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dial connects to a broker's gRPC address, and returns the connection and
// a context bounding the test's calls; both end with the test.
func dial(t *testing.T, addr string) (*grpc.ClientConn, context.Context) {
	t.Helper()
	cc, err := transport.Dial(addr, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return cc, ctx
}

func TestReplbroker_ServesAndStopsOnSIGTERM(t *testing.T) {
	p := start(t, local("t1")...)
	st := apiStatus(t, p.HTTP)
	if st.Broker != "t1" || len(st.Brokers) != 1 || st.Brokers[0].Addr != p.GRPC {
		t.Fatalf("status: %+v", st)
	}

	cc, ctx := dial(t, p.GRPC)
	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: transport.BrokerServiceName})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}

	// A component registers: it shows in /api/status, on the page and in
	// the metrics.
	sctx, scancel := context.WithCancel(ctx)
	stream, err := transport.NewBrokerClient(cc).Session(sctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := &transport.Register{Version: transport.ProtocolVersion, Service: "products", Instance: "p1",
		Subscriptions: []transport.SubInfo{{Service: "stores", Table: "stores", Seq: 12, Lag: 3}}}
	if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: reg}); err != nil {
		t.Fatal(err)
	}
	if f, err := stream.Recv(); err != nil || f.Topology == nil || f.Broker != "t1" {
		t.Fatalf("first frame: %+v %v", f, err)
	}
	st = apiStatus(t, p.HTTP)
	if len(st.Instances) != 1 || st.Instances[0].Instance != "p1" || st.Instances[0].Broker != "t1" ||
		len(st.Instances[0].Subscriptions) != 1 || st.Instances[0].Subscriptions[0].Table != "stores" {
		t.Fatalf("status instances: %+v", st.Instances)
	}
	// The page at / is the broker package's, which draws it from
	// /api/status in the browser (tested there, in a real one).
	if page := get(t, "http://"+p.HTTP+"/"); !strings.Contains(page, `fetch("api/status"`) {
		t.Fatalf("/ is not the status page:\n%s", page)
	}
	if m := get(t, "http://"+p.HTTP+"/metrics"); !strings.Contains(m, "replmesh_broker_sessions_open 1") || !strings.Contains(m, "go_goroutines") {
		t.Fatalf("metrics:\n%s", m)
	}

	// SIGTERM: the session is ended by the broker, the process exits 0.
	// One signal only: the broker may be gone by the time the session
	// ends here.
	p.signal(syscall.SIGTERM)
	if _, err := stream.Recv(); !errors.Is(transport.FromStatus(err), transport.ErrUnavailable) {
		t.Fatalf("session at SIGTERM: %v, want ErrUnavailable", err)
	}
	scancel()
	p.stopped(15 * time.Second)
	for _, want := range []string{`"msg":"broker stopping"`, `"msg":"replbroker stopped"`} {
		if !strings.Contains(p.log(), want) {
			t.Errorf("log lacks %s:\n%s", want, p.log())
		}
	}
}

func TestReplbroker_JoinsACluster(t *testing.T) {
	a := start(t, local("a")...)
	b := start(t, local("b", "-join", a.Gossip)...)
	for _, p := range []*proc{a, b} {
		waitUntil(t, p.Name+" sees two brokers", func() bool { return len(apiStatus(t, p.HTTP).Brokers) == 2 })
	}
	b.stop(15 * time.Second)
	waitUntil(t, "a sees b leave", func() bool {
		for _, br := range apiStatus(t, a.HTTP).Brokers {
			if br.Name == "b" {
				return br.State == "gone"
			}
		}
		return false
	})
	a.stop(15 * time.Second)
}

// fileWriter returns a function that writes body to the file name in a
// temporary directory of t and returns its path.
func fileWriter(t *testing.T) func(name, body string) string {
	dir := t.TempDir()
	return func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
}

func TestReplbroker_ConfigFile(t *testing.T) {
	write := fileWriter(t)
	t.Run("flags override the file", func(t *testing.T) {
		cfg := write("ok.yaml", "name: fromfile\nlease: 7s\ntoken: s3cret\ngrpc_addr: 127.0.0.1:0\n")
		p := start(t, local("fromflag", "-config", cfg)...)
		if p.Name != "fromflag" || p.Lease != "7s" {
			t.Fatalf("name %q lease %q, want fromflag (flag) and 7s (file)", p.Name, p.Lease)
		}
		if st := apiStatus(t, p.HTTP); st.Broker != "fromflag" {
			t.Fatalf("status broker %q", st.Broker)
		}
		p.stop(15 * time.Second)
	})
	for _, tc := range []struct {
		name, body, want string
	}{
		{"unknown key", "name: x\nlease: 2s\nleese: 3s\n", `:3: unknown key "leese"`},
		{"unknown nested key", "tls:\n  cert: a.pem\n  keyfile: b.pem\n", `:3: unknown key "tls.keyfile" in tls`},
		{"duplicate key", "name: x\nname: y\n", `:2: key "name" given twice`},
		{"bad duration", "lease: soon\n", `:1: lease: "soon" is not a duration: write it as a number with a unit, such as "5s"`},
		{"duration without unit", "name: x\nlease: 5\n", `:2: lease: 5 is not a duration: write "5s"`},
		{"heartbeat above half the lease", "lease: 1s\nheartbeat: 10s\n", "heartbeat (flag -heartbeat, config key heartbeat) is 10s; it must be more than 0 and at most half of lease (1s): 500ms or less"},
		{"bad gossip key", "gossip_key: c2hvcnQ=\n", "gossip_key (flag -gossip-key, config key gossip_key) is 5 bytes; it must be 16, 24 or 32"},
		{"bad profile", "gossip_profile: fast\n", "gossip profile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startNoWait(t, "-grpc", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-http", "127.0.0.1:0",
				"-config", write(strings.ReplaceAll(tc.name, " ", "_")+".yaml", tc.body))
			if err := p.wait(15 * time.Second); err == nil {
				t.Fatal("replbroker started with a bad config")
			}
			if !strings.Contains(p.log(), tc.want) {
				t.Fatalf("error does not say %q:\n%s", tc.want, p.log())
			}
		})
	}
}

// A setting out of range, from a flag or from the file, is refused with a
// message naming the setting (flag and key) and the values it accepts.
func TestParseArgs_BadSettings(t *testing.T) {
	dir, n := t.TempDir(), 0
	file := func(body string) string {
		n++
		path := filepath.Join(dir, fmt.Sprintf("c%d.yaml", n))
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // each must be in the error
	}{
		{"zero lease flag", []string{"-lease", "0s"},
			[]string{"lease (flag -lease, config key lease) is 0s", "it must be more than 0"}},
		{"negative lease flag", []string{"-lease", "-2s"},
			[]string{"flag -lease", "is -2s", "it must be more than 0"}},
		{"zero lease in the file", []string{"-config", file("lease: 0s\n")},
			[]string{"config key lease", "is 0s", "it must be more than 0"}},
		{"heartbeat not below the lease", []string{"-heartbeat", "10s", "-lease", "1s"},
			[]string{"heartbeat (flag -heartbeat, config key heartbeat) is 10s", "at most half of lease (1s): 500ms or less"}},
		{"heartbeat just above half the lease", []string{"-heartbeat", "2600ms"},
			[]string{"flag -heartbeat", "is 2.6s", "at most half of lease (5s): 2.5s or less"}},
		{"heartbeat from the file, lease from a flag", []string{"-config", file("heartbeat: 3s\n"), "-lease", "2s"},
			[]string{"config key heartbeat", "is 3s", "at most half of lease (2s)"}},
		{"negative rehome wait flag", []string{"-rehome-wait", "-1s"},
			[]string{"rehome_wait (flag -rehome-wait, config key rehome_wait) is -1s", "it must be 0 or more"}},
		{"negative rehome wait in the file", []string{"-config", file("rehome_wait: -3s\n")},
			[]string{"config key rehome_wait", "is -3s", "it must be 0 or more"}},
		{"zero shutdown timeout", []string{"-shutdown-timeout", "0s"},
			[]string{"shutdown_timeout (flag -shutdown-timeout, config key shutdown_timeout) is 0s", "it must be more than 0"}},
		{"lease flag without unit", []string{"-lease", "5"},
			[]string{"-lease", `5 is not a duration: write "5s"`}},
		{"lease key without unit", []string{"-config", file("lease: 5\n")},
			[]string{":1: lease: 5", `write "5s"`}},
		{"fractional heartbeat key", []string{"-config", file("heartbeat: 0.5\n")},
			[]string{":1: heartbeat: 0.5", `write "0.5s"`}},
		{"shutdown key as a word", []string{"-config", file("shutdown_timeout: soon\n")},
			[]string{":1: shutdown_timeout:", `"soon" is not a duration`, `"500ms"`}},
		{"duration key as a list", []string{"-config", file("lease: [1, 2]\n")},
			[]string{":1: lease:", "is not a duration"}},
		{"short gossip key", []string{"-gossip-key", "c2hvcnQ="},
			[]string{"gossip_key (flag -gossip-key, config key gossip_key) is 5 bytes; it must be 16, 24 or 32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			_, _, _, err := parseArgs(tc.args, &stderr)
			if err == nil {
				t.Fatalf("parseArgs(%q) accepted the setting", tc.args)
			}
			got := err.Error() + "\n" + stderr.String()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("error does not say %q:\n%s", w, got)
				}
			}
		})
	}
	// At the boundary, and with the defaults and the local profile, the
	// settings are accepted.
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"defaults", nil},
		{"heartbeat half the lease", []string{"-lease", "1s", "-heartbeat", "500ms"}},
		{"local profile", []string{"-gossip-profile", "local"}},
		{"heartbeat half the lease in the file", []string{"-config", file("lease: 9s\nheartbeat: 4500ms\n")}},
	} {
		t.Run("accepted/"+tc.name, func(t *testing.T) {
			if _, _, _, err := parseArgs(tc.args, io.Discard); err != nil {
				t.Errorf("parseArgs(%q): %v", tc.args, err)
			}
		})
	}
}

func TestParseArgs_Defaults(t *testing.T) {
	cfg, httpAddr, _, err := parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPCAddr != broker.DefaultGRPCAddr || cfg.BindAddr != broker.DefaultGossipAddr || httpAddr != broker.DefaultHTTPAddr {
		t.Fatalf("defaults: grpc %s gossip %s http %s", cfg.GRPCAddr, cfg.BindAddr, httpAddr)
	}
	if len(cfg.Join) != 0 || cfg.Token != "" || cfg.Lease != broker.DefaultConfig().Lease {
		t.Fatalf("defaults: %+v", cfg)
	}
	cfg, httpAddr, _, err = parseArgs([]string{"-http", "off", "-join", "10.0.0.1:7401, 10.0.0.2:7401", "-gossip-key", "MDEyMzQ1Njc4OWFiY2RlZg=="}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if httpAddr != "" || len(cfg.Join) != 2 || cfg.Join[1] != "10.0.0.2:7401" || string(cfg.GossipKey) != "0123456789abcdef" {
		t.Fatalf("flags: http %q join %v key %q", httpAddr, cfg.Join, cfg.GossipKey)
	}
}

func TestExampleConfigLoads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(path, []byte(exampleConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	fc, err := loadFile(path)
	if err != nil {
		t.Fatalf("the -print-config example does not load: %v", err)
	}
	if fc.GRPCAddr != broker.DefaultGRPCAddr || fc.Lease != 5*time.Second {
		t.Fatalf("example: %+v", fc)
	}
	if _, _, _, err := parseArgs([]string{"-config", path}, io.Discard); err != nil {
		t.Fatalf("the example config is not usable: %v", err)
	}
}

// -modes loads the per-table mode file and sets its modes as overrides.
func TestModesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "modes.yaml")
	if err := os.WriteFile(path, []byte("version: 1\ntables:\n  stores/store_managers:\n    mode: pull\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, _, mf, err := parseArgsModes([]string{"-modes", path}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.LocalConfig("m1")
	b, err := broker.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := applyModeFile(context.Background(), b, mf); err != nil {
		t.Fatal(err)
	}
	st, err := b.Status(context.Background(), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Overrides["stores/store_managers"]; got != "pull" {
		t.Fatalf("override = %q, want pull (overrides %v)", got, st.Overrides)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntables:\n  stores/x:\n    mode: sideways\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, _, _, err := parseArgsModes([]string{"-modes", bad}, io.Discard); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Fatalf("bad mode file: %v, want an error naming line 4", err)
	}
}

func TestDiffModes(t *testing.T) {
	const push, pull, auto = modes.Push, modes.Pull, modes.Auto
	for _, tc := range []struct {
		name     string
		old, new map[string]modes.Mode
		want     []modeChange
	}{
		{"nothing", nil, nil, nil},
		{"same", map[string]modes.Mode{"s/a": pull}, map[string]modes.Mode{"s/a": pull}, nil},
		{"added", nil, map[string]modes.Mode{"s/a": pull}, []modeChange{{table: "s/a", to: "pull"}}},
		{"removed", map[string]modes.Mode{"s/a": pull}, nil, []modeChange{{table: "s/a", from: "pull"}}},
		{"changed", map[string]modes.Mode{"s/a": pull}, map[string]modes.Mode{"s/a": auto}, []modeChange{{table: "s/a", from: "pull", to: "auto"}}},
		{"all, sorted by table",
			map[string]modes.Mode{"s/c": push, "s/b": pull, "s/d": auto},
			map[string]modes.Mode{"s/a": auto, "s/b": push, "s/d": auto},
			[]modeChange{{table: "s/a", to: "auto"}, {table: "s/b", from: "pull", to: "push"}, {table: "s/c", from: "push"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := diffModes(tc.old, tc.new); !slices.Equal(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// waitLog waits until the process has logged want.
func (p *proc) waitLog(want string) {
	p.t.Helper()
	waitUntil(p.t, "the log line "+want, func() bool { return strings.Contains(p.log(), want) })
}

// SIGHUP reloads the -modes file: what changed is applied and logged, an
// override changed since with replctl stays, a bad file changes nothing,
// and the broker goes on serving (SIGHUP used to end it, exit 129).
func TestReplbroker_SIGHUPReloadsModes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "modes.yaml")
	writeModes := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte("version: 1\ntables:\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeModes("  s/removed: {mode: pull}\n  s/changed: {mode: push}\n  s/kept: {mode: auto}\n  s/same: {mode: pull}\n  s/overridden: {mode: pull}\n")
	p := start(t, local("hup", "-modes", path)...)
	overrides := func() map[string]string { return apiStatus(t, p.HTTP).Overrides }
	want := map[string]string{"s/removed": "pull", "s/changed": "push", "s/kept": "auto", "s/same": "pull", "s/overridden": "pull"}
	if got := overrides(); !maps.Equal(got, want) {
		t.Fatalf("overrides at start: %v, want %v", got, want)
	}
	// An operator changes one of the file's overrides.
	cc, ctx := dial(t, p.GRPC)
	if _, err := transport.NewBrokerClient(cc).SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion,
		Service: "s", Table: "overridden", Mode: "push"}); err != nil {
		t.Fatal(err)
	}

	writeModes("  s/changed: {mode: pull}\n  s/kept: {mode: auto}\n  s/same: {mode: pull}\n  s/added: {mode: auto}\n")
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"modes file reloaded"`)
	want = map[string]string{"s/changed": "pull", "s/kept": "auto", "s/same": "pull", "s/added": "auto", "s/overridden": "push"}
	if got := overrides(); !maps.Equal(got, want) {
		t.Fatalf("overrides after the reload: %v, want %v", got, want)
	}
	for _, line := range []string{
		`"msg":"modes file: table added","table":"s/added","mode":"auto"`,
		`"msg":"modes file: table removed; override cleared","table":"s/removed","mode":"pull"`,
		`"msg":"modes file: mode changed","table":"s/changed","from":"push","to":"pull"`,
		`"msg":"modes file: table removed; its override was changed since and stays","table":"s/overridden","file_mode":"pull","override":"push"`,
		`"added":1,"removed":2,"changed":1,"failed":0`,
	} {
		if !strings.Contains(p.log(), line) {
			t.Errorf("log lacks %s", line)
		}
	}
	if strings.Contains(p.log(), `"table":"s/same"`) || strings.Contains(p.log(), `"table":"s/kept"`) {
		t.Errorf("the log names a table that did not change:\n%s", p.log())
	}

	// A bad file: logged, nothing changes, the broker goes on.
	if err := os.WriteFile(path, []byte("version: 1\ntables:\n  s/changed:\n    mode: sideways\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"modes file not reloaded; the modes in force stay"`)
	if got := overrides(); !maps.Equal(got, want) {
		t.Fatalf("overrides after a bad file: %v, want %v", got, want)
	}
	// Fixed again: only what differs from the modes in force is applied.
	writeModes("  s/changed: {mode: pull}\n  s/kept: {mode: auto}\n  s/same: {mode: pull}\n  s/added: {mode: auto}\n")
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"modes file reloaded: nothing changed"`)
	p.stop(15 * time.Second)
}

// Without -modes, SIGHUP is logged and changes nothing.
func TestReplbroker_SIGHUPWithoutModesFile(t *testing.T) {
	p := start(t, local("hup0")...)
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"SIGHUP: no -modes file to reload"`)
	if st := apiStatus(t, p.HTTP); st.Broker != "hup0" {
		t.Fatalf("status after SIGHUP: %+v", st)
	}
	p.stop(15 * time.Second)
}
