package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// bins holds the binaries built for the tests; removed when they end.
var bins testutil.BinDir

func TestMain(m *testing.M) {
	bins.Main(m, "replctl-test", goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"))
}

// raceBuild: the tests run under -race (race_test.go), and so does the
// replctl binary they build.
var raceBuild bool

// binaries builds replctl and replbroker once per test run.
func binaries(t *testing.T) (ctl, brk string) {
	t.Helper()
	builds := [][]string{{".", "../replbroker"}}
	if raceBuild {
		builds = [][]string{{"../replbroker"}, {"-race", "."}}
	}
	dir := bins.Build(t, builds...)
	return filepath.Join(dir, "replctl"), filepath.Join(dir, "replbroker")
}

// result is one finished replctl run.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// env returns the environment for replctl: this process's, without
// REPLMESH_BROKER, plus extra.
func env(extra ...string) []string {
	var out []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, EnvBroker+"=") && !strings.HasPrefix(e, "GORACE=") {
			out = append(out, e)
		}
	}
	if raceBuild {
		// A race-enabled binary sleeps 1s at exit by default.
		out = append(out, "GORACE=atexit_sleep_ms=50")
	}
	return append(out, extra...)
}

// ctl runs replctl with args (and the given environment, nil: env()) and
// waits for it.
func ctl(t *testing.T, environ []string, args ...string) result {
	t.Helper()
	bin, _ := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	if environ == nil {
		environ = env()
	}
	cmd.Env = environ
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("replctl %v: %v", args, err)
	}
	t.Logf("replctl %s -> %d", strings.Join(args, " "), r.code)
	if strings.Contains(r.stderr, "DATA RACE") {
		t.Fatalf("replctl %v: the race detector fired:\n%s", args, r.stderr)
	}
	if os.Getenv("REPLCTL_TEST_SHOW") != "" {
		t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
	return r
}

// ctlOK runs replctl and fails the test unless it exits 0.
func ctlOK(t *testing.T, args ...string) result {
	t.Helper()
	r := ctl(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("replctl %v: %v", args, r)
	}
	return r
}

// ctlError runs replctl (with environ, nil: env()) and fails the test
// unless it exits with exitError and says each of want on stderr.
func ctlError(t *testing.T, environ []string, want []string, args ...string) {
	t.Helper()
	r := ctl(t, environ, args...)
	if r.code != exitError {
		t.Fatalf("replctl %q: exit %d, want %d: %v", args, r.code, exitError, r)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("replctl %q: stderr does not say %q: %v", args, w, r)
		}
	}
}

// ctlJSON runs replctl -o json and decodes its output into v.
func ctlJSON(t *testing.T, v any, args ...string) result {
	t.Helper()
	r := ctlOK(t, append([]string{"-o", "json"}, args...)...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		t.Fatalf("replctl %v: output is not the JSON expected: %v\n%s", args, err, r.stdout)
	}
	return r
}

// startBroker runs the real replbroker on free ports and returns its gRPC
// address.
func startBroker(t *testing.T, name string, extra ...string) string {
	t.Helper()
	_, bin := binaries(t)
	cmd := exec.Command(bin, append([]string{"-name", name, "-grpc", "127.0.0.1:0", "-gossip", "127.0.0.1:0", "-http", "off",
		"-log-format", "json", "-gossip-profile", "local", "-lease", "1s", "-heartbeat", "200ms"}, extra...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrCh := make(chan string, 1)
	done := make(chan struct{})
	var logMu sync.Mutex
	var logBuf strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logMu.Lock()
			logBuf.WriteString(sc.Text() + "\n")
			logMu.Unlock()
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "replbroker serving" {
				a, _ := rec["grpc"].(string)
				addrCh <- a
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	select {
	case a := <-addrCh:
		return a
	case <-done:
	case <-time.After(30 * time.Second):
	}
	logMu.Lock()
	defer logMu.Unlock()
	t.Fatalf("replbroker did not start:\n%s", logBuf.String())
	return ""
}

func testLogger(t testing.TB) *slog.Logger { return testutil.Logger(t) }

func ctxT(t testing.TB, d time.Duration) context.Context { return testutil.Context(t, d) }

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitUntil(t, d, what, cond)
}

// component opens a replica.Component registered with the broker.
func component(t *testing.T, brokerAddr, service, instance string, owner bool) *replica.Component {
	t.Helper()
	cfg := replica.LocalConfig(service, instance)
	cfg.Brokers = []string{brokerAddr}
	cfg.Owner = owner
	cfg.Logger = testLogger(t)
	c, err := replica.Open(ctxT(t, 20*time.Second), cfg)
	if err != nil {
		t.Fatalf("open %s/%s: %v", service, instance, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// registry asks the broker at addr for its status (from the test, not
// through replctl).
func registry(t *testing.T, addr string) *transport.StatusResponse {
	t.Helper()
	cc, err := transport.Dial(addr, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	st, err := transport.NewBrokerClient(cc).Status(ctxT(t, 30*time.Second), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		t.Fatalf("broker status: %v", err)
	}
	return st
}

// mesh is a broker (the real binary) with the stores service (primary and
// standby owning "managers" and "secrets", the latter readable only by
// products) and a products consumer of both tables.
type mesh struct {
	broker                   string
	primary, standby         *replica.Component
	primaryName, standbyName string
	managers, secrets        *replica.OwnedTable // on the primary
	standbyManagers          *replica.OwnedTable
	consumer                 *replica.Component
	repManagers, repSecrets  *replica.Replica
}

func startMesh(t *testing.T) *mesh {
	t.Helper()
	m := &mesh{broker: startBroker(t, "b1")}
	a := component(t, m.broker, "stores", "a", true)
	b := component(t, m.broker, "stores", "b", true)
	own := func(c *replica.Component) (mg, sec *replica.OwnedTable) {
		var err error
		if mg, err = c.Own("managers"); err != nil {
			t.Fatal(err)
		}
		if sec, err = c.Own("secrets", replica.TableOptions{AllowServices: []string{"products"}, Mode: modes.Push}); err != nil {
			t.Fatal(err)
		}
		return mg, sec
	}
	am, as := own(a)
	bm, bs := own(b)
	waitUntil(t, 20*time.Second, "a primary", func() bool {
		ra, _ := a.Role()
		rb, _ := b.Role()
		return ra == transport.RolePrimary || rb == transport.RolePrimary
	})
	m.primary, m.standby, m.primaryName, m.standbyName, m.managers, m.secrets, m.standbyManagers = a, b, "a", "b", am, as, bm
	if r, _ := b.Role(); r == transport.RolePrimary {
		m.primary, m.standby, m.primaryName, m.standbyName, m.managers, m.secrets, m.standbyManagers = b, a, "b", "a", bm, bs, am
	}
	m.consumer = component(t, m.broker, "products", "p1", false)
	var err error
	if m.repManagers, err = m.consumer.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "managers"}); err != nil {
		t.Fatal(err)
	}
	if m.repSecrets, err = m.consumer.Subscribe(ctxT(t, 30*time.Second), replica.SubscribeOptions{Service: "stores", Table: "secrets",
		Modes: &modes.TableConfig{Mode: modes.Push}}); err != nil {
		t.Fatal(err)
	}
	return m
}

// put writes one row on the primary (retrying while the primary lease is
// being settled) and returns its seq.
func put(t *testing.T, tb *replica.OwnedTable, key, value string) uint64 {
	t.Helper()
	var seq uint64
	waitUntil(t, 20*time.Second, "write "+key, func() bool {
		var err error
		seq, err = tb.Put(ctxT(t, 30*time.Second), []byte(key), []byte(value))
		return err == nil
	})
	return seq
}

// settle waits until the consumer, the standby and the broker's registry
// all hold the primary's head of managers.
func (m *mesh) settle(t *testing.T) uint64 {
	t.Helper()
	head := m.managers.Head()
	secHead := m.secrets.Head()
	if err := m.repManagers.WaitFor(ctxT(t, 20*time.Second), head); err != nil {
		t.Fatalf("consumer of managers: %v", err)
	}
	if err := m.repSecrets.WaitFor(ctxT(t, 20*time.Second), secHead); err != nil {
		t.Fatalf("consumer of secrets: %v", err)
	}
	waitUntil(t, 20*time.Second, "standby caught up", func() bool { return m.standbyManagers.Head() == head })
	waitUntil(t, 20*time.Second, "registry up to date", func() bool {
		st := registry(t, m.broker)
		okHead, okSub, okStandby := false, 0, false
		for _, o := range st.Owners {
			for _, ti := range o.Tables {
				if o.Service == "stores" && ti.Table == "managers" && ti.Head == head {
					okHead = true
				}
			}
		}
		for _, in := range st.Instances {
			for _, s := range in.Subscriptions {
				if s.Seq == head && s.Table == "managers" || s.Seq == secHead && s.Table == "secrets" {
					okSub++
				}
			}
			if in.Instance == m.standbyName {
				for _, ti := range in.Tables {
					if ti.Table == "managers" && ti.Head == head {
						okStandby = true
					}
				}
			}
		}
		return okHead && okSub == 2 && okStandby
	})
	return head
}

// The default broker address is the one replbroker serves with no flags.
func TestDefaultBroker(t *testing.T) {
	if DefaultBroker != broker.DefaultGRPCAddr {
		t.Fatalf("replctl's default broker %s, replbroker's default gRPC address %s", DefaultBroker, broker.DefaultGRPCAddr)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "usage: replctl"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"-o", "yaml", "status"}, `-o "yaml": want text or json`},
		{[]string{"status", "extra"}, "status takes no arguments"},
		{[]string{"get", "stores"}, "want SERVICE/TABLE KEY"},
		{[]string{"get", "stores", "k"}, `"stores": want SERVICE/TABLE`},
		{[]string{"tail", "stores/t", "-n", "-1"}, "-n must be >= 0"},
		{[]string{"verify"}, "want SERVICE/TABLE"},
		{[]string{"mode", "set", "stores/t", "fast"}, `mode "fast"`},
		{[]string{"mode", "frob"}, `mode "frob"`},
		{[]string{"status", "-nosuchflag"}, "flag provided but not defined"},
		{[]string{"-tls-ca", "/nonexistent/ca.pem", "status"}, "-tls-ca"},
	} {
		name := strings.Join(tc.args, " ")
		if name == "" {
			name = "no arguments"
		}
		t.Run(name, func(t *testing.T) {
			r := ctl(t, nil, tc.args...)
			if r.code != exitUsage || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
				t.Errorf("replctl %q: want exit 2 and %q on stderr, got %v", tc.args, tc.want, r)
			}
		})
	}
	t.Run("-h", func(t *testing.T) {
		if r := ctl(t, nil, "-h"); r.code != 0 || !strings.Contains(r.stderr, "verify") {
			t.Errorf("replctl -h: %v", r)
		}
	})
}

func TestUnreachableBroker(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	for _, tc := range []struct {
		name string
		env  []string // nil: env()
		args []string
		want []string // each must be on stderr
	}{
		{"status against a closed port", nil, []string{"-broker", addr, "status"},
			[]string{"replctl: cannot reach broker " + addr, "is replbroker running?"}},
		// REPLMESH_BROKER is the default -broker.
		{"consumers with " + EnvBroker, env(EnvBroker + "=" + addr), []string{"consumers"},
			[]string{"cannot reach broker " + addr}},
	} {
		t.Run(tc.name, func(t *testing.T) { ctlError(t, tc.env, tc.want, tc.args...) })
	}
}

// With -tls-ca replctl talks TLS to a broker that serves it; without, the
// error says it cannot reach the broker.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeCert(t, dir)
	addr := startBroker(t, "bt", "-tls-cert", cert, "-tls-key", key)
	var st transport.StatusResponse
	ctlJSON(t, &st, "-broker", addr, "-tls-ca", ca, "status")
	if st.Broker != "bt" {
		t.Fatalf("status over TLS: %+v", st)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string // each must be on stderr
	}{
		{"plaintext against a TLS broker", []string{"-broker", addr, "-timeout", "2s", "status"},
			[]string{"broker " + addr, "does the broker serve TLS?"}},
		{"TLS without the CA", []string{"-broker", addr, "-tls", "-timeout", "2s", "status"},
			[]string{"certificate signed by unknown authority", "pass -tls-ca"}},
	} {
		t.Run(tc.name, func(t *testing.T) { ctlError(t, nil, tc.want, tc.args...) })
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 (its own CA)
// and its key into dir.
func writeCert(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "replctl test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, certFile, keyFile
}

func TestReplctl(t *testing.T) {
	m := startMesh(t)
	put(t, m.managers, "-dash", "d")
	for i := range 10 {
		put(t, m.managers, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
	}
	put(t, m.managers, "greeting", "hello world")
	put(t, m.managers, "bin", "\x00\xff\x01")
	put(t, m.secrets, "s1", "classified")
	head := m.settle(t)
	logID := m.managers.LogID()
	br := "-broker=" + m.broker

	t.Run("status", func(t *testing.T) {
		var st transport.StatusResponse
		ctlJSON(t, &st, br, "status")
		if st.Broker != "b1" || len(st.Brokers) != 1 || st.Brokers[0].Addr != m.broker || st.Brokers[0].State != "alive" {
			t.Fatalf("brokers: %+v (answered by %s)", st.Brokers, st.Broker)
		}
		if len(st.Owners) != 1 {
			t.Fatalf("owners: %+v", st.Owners)
		}
		o := st.Owners[0]
		if o.Service != "stores" || o.Primary.Instance != m.primaryName || o.Primary.Addr != m.primary.Addr() || o.Epoch == 0 ||
			len(o.Standbys) != 1 || o.Standbys[0].Instance != m.standbyName {
			t.Fatalf("stores: %+v", o)
		}
		if len(o.Tables) != 2 || o.Tables[0].Table != "managers" || o.Tables[0].Head != head || o.Tables[0].LogID != logID {
			t.Fatalf("stores tables: %+v", o.Tables)
		}
		roles := map[string]string{}
		for _, in := range st.Instances {
			roles[in.Service+"/"+in.Instance] = in.Role
			if in.Broker != "b1" || in.LastSeenMs == 0 {
				t.Errorf("instance %+v: want broker b1 and a last-seen time", in)
			}
		}
		want := map[string]string{"stores/" + m.primaryName: "primary", "stores/" + m.standbyName: "standby", "products/p1": "consumer"}
		if fmt.Sprint(roles) != fmt.Sprint(want) {
			t.Fatalf("roles %v, want %v", roles, want)
		}

		// The text form: every section, aligned columns.
		out := ctlOK(t, br, "status").stdout
		for _, s := range []string{"BROKERS (answered by b1)", "SERVICES", "INSTANCES", "TABLES", "b1", m.broker, "products", "consumer"} {
			if !strings.Contains(out, s) {
				t.Errorf("status text lacks %q:\n%s", s, out)
			}
		}
		lines := strings.Split(out, "\n")
		for i, l := range lines {
			if !strings.HasPrefix(l, "TABLE ") {
				continue
			}
			row := lines[i+1]
			if !strings.HasPrefix(row, "stores/managers ") {
				t.Fatalf("first table row %q", row)
			}
			col := strings.Index(l, "HEAD")
			if got := strings.Fields(row[col:])[0]; got != strconv.FormatUint(head, 10) {
				t.Fatalf("HEAD column of %q is %q, want %d:\n%s", row, got, head, out)
			}
			if !strings.Contains(row, m.standbyName+"@"+strconv.FormatUint(head, 10)) || !strings.Contains(row, logID) {
				t.Fatalf("table row %q lacks the standby's head or the log id", row)
			}
		}
	})

	t.Run("tables", func(t *testing.T) {
		var rows []tableRow
		ctlJSON(t, &rows, "tables", br) // flags after the command work too
		if len(rows) != 2 {
			t.Fatalf("tables: %+v", rows)
		}
		r := rows[0]
		if r.Service != "stores" || r.Table != "managers" || r.Owner != m.primaryName || r.Head != head || r.LogID != logID ||
			r.Mode != "push" || r.ModeSource != "default" || len(r.Standbys) != 1 || r.Standbys[0].Instance != m.standbyName || r.Standbys[0].Head != head {
			t.Fatalf("managers: %+v", r)
		}
		if r := rows[1]; r.Table != "secrets" || r.Mode != "push" || r.ModeSource != "owner" {
			t.Fatalf("secrets (an explicit owner default): %+v", r)
		}
	})

	t.Run("consumers", func(t *testing.T) {
		var rows []consumerRow
		ctlJSON(t, &rows, br, "consumers")
		if len(rows) != 2 {
			t.Fatalf("consumers: %+v", rows)
		}
		r := rows[0]
		if r.Service != "products" || r.Instance != "p1" || r.Owner != "stores" || r.Table != "managers" || r.Seq != head ||
			r.Head != head || r.Lag != 0 || r.State != "streaming" || r.Mode != "push" || r.ModeSource != "default" || r.Requested != "" {
			t.Fatalf("p1 on managers: %+v", r)
		}
		if r := rows[1]; r.Table != "secrets" || r.Seq != m.secrets.Head() || r.ModeSource != "subscription" || r.Requested != "push" {
			t.Fatalf("p1 on secrets (an explicit subscription mode): %+v", r)
		}
		out := ctlOK(t, br, "consumers").stdout
		if !strings.HasPrefix(out, "CONSUMER ") || !strings.Contains(out, "products/p1") || !strings.Contains(out, "stores/managers") ||
			!strings.Contains(out, "streaming") {
			t.Fatalf("consumers text:\n%s", out)
		}
	})

	t.Run("get", func(t *testing.T) {
		var g getResult
		ctlJSON(t, &g, br, "get", "stores/managers", "k3", "greeting", "bin")
		if g.Seq != head || g.LogID != logID || g.Instance != m.primaryName || len(g.Values) != 3 {
			t.Fatalf("get: %+v", g)
		}
		if v := g.Values[0]; !v.Found || v.Value == nil || *v.Value != "v3" || *v.ValueHex != "7633" || *v.Key != "k3" {
			t.Fatalf("k3: %+v", v)
		}
		if v := g.Values[2]; !v.Found || v.Value != nil || *v.ValueHex != "00ff01" {
			t.Fatalf("bin: %+v", v)
		}

		out := ctlOK(t, br, "get", "stores/managers", "k3", "greeting", "bin").stdout
		for _, s := range []string{fmt.Sprintf("at seq %d on %s", head, m.primaryName), "k3        v3", `"hello world"`, "0x00ff01"} {
			if !strings.Contains(out, s) {
				t.Errorf("get text lacks %q:\n%s", s, out)
			}
		}
		if out := ctlOK(t, br, "get", "-hex", "stores/managers", "k3").stdout; !strings.Contains(out, "0x6b33  0x7633") {
			t.Errorf("get -hex:\n%s", out)
		}
		if out := ctlOK(t, br, "get", "-raw", "stores/managers", "greeting").stdout; out != "hello world" {
			t.Errorf("get -raw: %q", out)
		}
		if out := ctlOK(t, br, "get", "-key-hex", "-raw", "stores/managers", "6b33").stdout; out != "v3" {
			t.Errorf("get -key-hex: %q", out)
		}
		if out := ctlOK(t, br, "get", "stores/managers", "-raw", "--", "-dash").stdout; out != "d" {
			t.Errorf("get of a key that begins with -: %q", out)
		}

		// A missing key is a failed check (exit 1), with a clear message.
		r := ctl(t, nil, br, "get", "stores/managers", "nope")
		if r.code != exitFailed || !strings.Contains(r.stderr, "replctl: stores/managers: key nope not found (at seq "+strconv.FormatUint(head, 10)+")") ||
			!strings.Contains(r.stdout, "(not found)") {
			t.Fatalf("missing key: %v", r)
		}
		r = ctl(t, nil, br, "-o", "json", "get", "stores/managers", "k1", "nope")
		if r.code != exitFailed || json.Unmarshal([]byte(r.stdout), &g) != nil || !g.Values[0].Found || g.Values[1].Found {
			t.Fatalf("one of two keys missing: %v", r)
		}

		// A restricted table: permission denied, unless replctl presents a
		// service the table allows.
		r = ctl(t, nil, br, "get", "stores/secrets", "s1")
		if r.code != exitError || !strings.Contains(r.stderr, "permission denied") || !strings.Contains(r.stderr, "-service NAME") {
			t.Fatalf("restricted table: %v", r)
		}
		if out := ctlOK(t, br, "get", "-service", "products", "-raw", "stores/secrets", "s1").stdout; out != "classified" {
			t.Fatalf("restricted table read as products: %q", out)
		}

		// Unknown table and service.
		if r := ctl(t, nil, br, "get", "stores/nosuch", "k"); r.code != exitError || !strings.Contains(r.stderr, `no such table: unknown table: "nosuch" is not owned by stores/`) {
			t.Fatalf("unknown table: %v", r)
		}
		if r := ctl(t, nil, br, "get", "nosuch/t", "k"); r.code != exitError || !strings.Contains(r.stderr, `the broker knows no service "nosuch"`) {
			t.Fatalf("unknown service: %v", r)
		}
	})

	t.Run("keys", func(t *testing.T) {
		// On the real owner: in key order, with a prefix, in pages.
		var want []string
		for i := range 10 {
			want = append(want, fmt.Sprintf("k%d", i))
		}
		if out := ctlOK(t, br, "keys", "stores/managers", "k").stdout; out != strings.Join(want, "\n")+"\n" {
			t.Fatalf("keys with prefix k:\n%s", out)
		}
		var kr keysResult
		ctlJSON(t, &kr, br, "keys", "-limit", "0", "stores/managers")
		if len(kr.Keys) != 13 || *kr.Keys[0].Key != "-dash" || kr.Seq != head || kr.LogID != logID || kr.More || kr.Instance != m.primaryName {
			t.Fatalf("keys -limit 0: %+v", kr)
		}
		if r := ctl(t, nil, br, "keys", "stores/nosuch"); r.code != exitError || !strings.Contains(r.stderr, "no such table") ||
			!strings.Contains(r.stderr, "(the tables of stores: managers, secrets)") {
			t.Fatalf("keys of an unknown table: %v", r)
		}
		if r := ctl(t, nil, br, "keys", "stores/secrets"); r.code != exitError || !strings.Contains(r.stderr, "permission denied") {
			t.Fatalf("keys of a restricted table: %v", r)
		}
	})

	t.Run("verify", func(t *testing.T) {
		var rep verifyReport
		r := ctlJSON(t, &rep, br, "verify", "stores/managers")
		if !rep.OK || rep.Seq != head || rep.LogID != logID || rep.Primary != m.primaryName || rep.Rows != 13 {
			t.Fatalf("verify: %+v", rep)
		}
		got := map[string]string{}
		for _, in := range rep.Instances {
			got[in.Instance] = in.Role + " " + in.Result
		}
		want := map[string]string{m.primaryName: "primary reference", m.standbyName: "standby equal", "p1": "consumer caught-up"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("verify results %v, want %v", got, want)
		}
		if r.stderr != "" {
			t.Fatalf("verify wrote to stderr without -progress: %q", r.stderr)
		}
		// The text form, with the progress display forced on.
		r = ctlOK(t, br, "verify", "-progress", "stores/managers")
		if !strings.Contains(r.stdout, "OK: every owner instance") {
			t.Fatalf("verify text:\n%s", r.stdout)
		}
		found := false
		for _, l := range strings.Split(r.stdout, "\n") {
			f := strings.Fields(l)
			if len(f) == 6 && f[0] == "stores/"+m.standbyName && f[1] == "standby" && f[2] == strconv.FormatUint(head, 10) && f[3] == "13" && f[5] == "equal" {
				found = true
			}
		}
		if !found {
			t.Fatalf("verify text has no equal standby row:\n%s", r.stdout)
		}
		if !strings.Contains(r.stderr, "\rverify stores/managers [") {
			t.Fatalf("no progress display on stderr: %q", r.stderr)
		}
		// Restricted table: the primary's Digest refuses replctl.
		if r := ctl(t, nil, br, "verify", "stores/secrets"); r.code != exitError || !strings.Contains(r.stderr, "permission denied") {
			t.Fatalf("verify of a restricted table: %v", r)
		}
	})

	t.Run("tail -from", func(t *testing.T) {
		// The last three changes, as text.
		out := ctlOK(t, br, "tail", "-from", strconv.FormatUint(head-3, 10), "-n", "3", "stores/managers").stdout
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		want := []string{
			fmt.Sprintf("%d put k9 v9 ", head-2),
			fmt.Sprintf(`%d put greeting "hello world" `, head-1),
			fmt.Sprintf("%d put bin 0x00ff01 ", head),
		}
		if len(lines) != 3 {
			t.Fatalf("tail printed %d lines:\n%s", len(lines), out)
		}
		for i, w := range want {
			if !strings.HasPrefix(lines[i], w) {
				t.Fatalf("line %d = %q, want prefix %q", i, lines[i], w)
			}
			ts := strings.Fields(lines[i])
			if _, err := time.Parse(time.RFC3339, ts[len(ts)-1]); err != nil {
				t.Fatalf("line %d: time %q: %v", i, ts[len(ts)-1], err)
			}
		}
		if r := ctl(t, nil, br, "tail", "-from", strconv.FormatUint(head+100, 10), "stores/managers"); r.code != exitError || !strings.Contains(r.stderr, "is ahead of the table's head") {
			t.Fatalf("tail -from past the head: %v", r)
		}
		if r := ctl(t, nil, br, "tail", "stores/secrets"); r.code != exitError || !strings.Contains(r.stderr, "permission denied") {
			t.Fatalf("tail of a restricted table: %v", r)
		}
	})

	t.Run("tail live", func(t *testing.T) {
		tp := startTail(t, br, "-o", "json", "-n", "3", "stores/managers")
		written := writeUntil(t, m.managers, "live", tp.exited)
		r := tp.wait(t)
		if r.code != 0 {
			t.Fatalf("tail -n 3: %v", r)
		}
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if len(lines) != 3 {
			t.Fatalf("tail -n 3 printed %d lines:\n%s", len(lines), r.stdout)
		}
		var prev uint64
		for i, l := range lines {
			var cl changeLine
			if err := json.Unmarshal([]byte(l), &cl); err != nil {
				t.Fatalf("line %d %q: %v", i, l, err)
			}
			key, ok := written[cl.Seq]
			if !ok || cl.Key == nil || *cl.Key != key || cl.Op != "put" || cl.Value == nil || *cl.Value != "x-"+key || cl.Epoch == 0 {
				t.Fatalf("line %d: %+v; written: %v", i, cl, written)
			}
			if i > 0 && cl.Seq != prev+1 {
				t.Fatalf("seq %d after %d: a gap", cl.Seq, prev)
			}
			if _, err := time.Parse(time.RFC3339Nano, cl.Time); err != nil {
				t.Fatalf("time %q: %v", cl.Time, err)
			}
			prev = cl.Seq
		}
	})

	t.Run("tail until SIGINT", func(t *testing.T) {
		tp := startTail(t, br, "stores/managers")
		writeUntil(t, m.managers, "sig", func() bool { return strings.Contains(tp.stdout.String(), "\n") })
		tp.cmd.Process.Signal(os.Interrupt)
		r := tp.wait(t)
		if r.code != 0 || !strings.Contains(r.stdout, " put sig") {
			t.Fatalf("tail after SIGINT: %v", r)
		}
	})

	t.Run("mode set", func(t *testing.T) {
		var mr modeResult
		ctlJSON(t, &mr, br, "mode", "set", "stores/managers", "pull")
		if mr.Service != "stores" || mr.Table != "managers" || mr.Mode != "pull" || mr.Revision == 0 {
			t.Fatalf("mode set: %+v", mr)
		}
		var st transport.StatusResponse
		ctlJSON(t, &st, br, "status")
		if st.Overrides["stores/managers"] != "pull" {
			t.Fatalf("overrides after mode set: %v", st.Overrides)
		}
		var rows []consumerRow
		ctlJSON(t, &rows, br, "consumers")
		if rows[0].Table != "managers" || rows[0].Mode != "pull" || rows[0].ModeSource != "override" || rows[1].Mode != "push" {
			t.Fatalf("consumers after mode set: %+v", rows)
		}
		if out := ctlOK(t, br, "mode", "list").stdout; !strings.Contains(out, "stores/managers  pull") {
			t.Fatalf("mode list:\n%s", out)
		}
		if out := ctlOK(t, br, "status").stdout; !strings.Contains(out, "MODE OVERRIDES\nTABLE            MODE\nstores/managers  pull\n") ||
			!strings.Contains(out, "pull (override)") {
			t.Fatalf("status after mode set:\n%s", out)
		}
		if out := ctlOK(t, br, "mode", "set", "stores/managers", "clear").stdout; !strings.Contains(out, "mode override of stores/managers cleared") {
			t.Fatalf("mode set clear: %q", out)
		}
		var ovr map[string]string
		ctlJSON(t, &ovr, br, "mode", "list")
		if len(ovr) != 0 {
			t.Fatalf("overrides after clear: %v", ovr)
		}
	})
}

// tailProc is a running "replctl tail".
type tailProc struct {
	cmd    *exec.Cmd
	stdout *testutil.LogBuffer
	stderr *testutil.LogBuffer
	done   chan struct{} // closed when the process has exited
	err    error
}

// exited reports whether the process has exited.
func (tp *tailProc) exited() bool {
	select {
	case <-tp.done:
		return true
	default:
		return false
	}
}

func startTail(t *testing.T, args ...string) *tailProc {
	t.Helper()
	bin, _ := binaries(t)
	tp := &tailProc{stdout: &testutil.LogBuffer{}, stderr: &testutil.LogBuffer{}, done: make(chan struct{})}
	tp.cmd = exec.Command(bin, append([]string{"tail"}, args...)...)
	tp.cmd.Env = env()
	tp.cmd.Stdout, tp.cmd.Stderr = tp.stdout, tp.stderr
	if err := tp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tp.err = tp.cmd.Wait(); close(tp.done) }()
	t.Cleanup(func() {
		select {
		case <-tp.done:
		default:
			tp.cmd.Process.Kill()
			<-tp.done
		}
	})
	return tp
}

func (tp *tailProc) wait(t *testing.T) result {
	t.Helper()
	select {
	case <-tp.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("tail still running; stdout:\n%s", tp.stdout.String())
	}
	r := result{stdout: tp.stdout.String(), stderr: tp.stderr.String()}
	if strings.Contains(r.stderr, "DATA RACE") {
		t.Fatalf("tail: the race detector fired:\n%s", r.stderr)
	}
	var ee *exec.ExitError
	if errors.As(tp.err, &ee) {
		r.code = ee.ExitCode()
	} else if tp.err != nil {
		t.Fatal(tp.err)
	}
	return r
}

// writeUntil writes rows prefix-N (value x-prefix-N) on tb until stop
// returns true, and returns the key written at each seq.
func writeUntil(t *testing.T, tb *replica.OwnedTable, prefix string, stop func() bool) map[uint64]string {
	t.Helper()
	written := map[uint64]string{}
	ctx := ctxT(t, 30*time.Second)
	for i := 0; !stop(); i++ {
		if ctx.Err() != nil {
			t.Fatalf("still writing after 30s (%d rows)", i)
		}
		key := fmt.Sprintf("%s-%d", prefix, i)
		seq, err := tb.Put(ctx, []byte(key), []byte("x-"+key))
		if errors.Is(err, transport.ErrNotPrimary) {
			continue // a promotion is still settling
		}
		if errors.Is(err, replica.ErrNotReplicated) || errors.Is(err, replica.ErrNoLease) {
			// A primary with min_sync_standbys refuses a write (seq 0,
			// nothing written) or leaves it unconfirmed (committed at
			// seq) while a loaded machine delays its standby or its lease.
			if seq > 0 {
				written[seq] = key
			}
			continue
		}
		if err != nil {
			t.Fatalf("put %s: %v", key, err)
		}
		written[seq] = key
	}
	return written
}
