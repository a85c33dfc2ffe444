package broker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/replmesh/replmesh/transport"
)

// The registration flood, measured: a child process (so that its buffers
// do not count) holds one mTLS connection per identity of one service, and
// at once opens a session on each, registering 1024 tables. The broker,
// with the default limits, must accept MaxRegistrations of them, refuse the
// rest, and keep its heap while they arrive within a small multiple of
// what the accepted ones hold once settled.

// floodEnv names the attack file of the child (TestFloodAttacker); unset
// in the parent.
const floodEnv = "REPLMESH_TEST_FLOOD_ATTACK"

// floodProfileEnv, when set, names a directory where the flood test writes
// heap profiles: the heap in use at each new peak (10% above the last one
// written) and at the end, and the allocations over the whole flood.
const floodProfileEnv = "REPLMESH_TEST_FLOOD_PROFILE"

// floodAttack is what the child does.
type floodAttack struct {
	Addr      string               `json:"addr"`
	Service   string               `json:"service"`
	Instances []string             `json:"instances"`
	Files     []transport.TLSFiles `json:"files"` // one per instance
	Tables    int                  `json:"tables"`
}

// floodReport is the child's account, printed once every session is
// answered.
type floodReport struct {
	Accepted, Refused, Denied, Other int
	FirstErr                         string
}

func TestSecurity_RegistrationFloodMemory(t *testing.T) {
	if os.Getenv(floodEnv) != "" {
		t.Skip("in the attacker")
	}
	n, tables := 1000, DefaultMaxTables
	switch {
	case raceEnabled:
		// The counts still show the limits; the heap figures mean little.
		n, tables = 300, 128
	case testing.Short():
		n = 400
	}
	p := newTestPKI(t)
	b := startSecureBroker(t, p, func(c *Config) {
		// Production timings: no lease lapses while the flood is answered.
		c.Lease, c.Heartbeat, c.RegisterTimeout = 10*time.Second, time.Second, 10*time.Second
		// The counts below are the registration limit's: on a loaded
		// machine the default 2s wait for a handshake turn could refuse
		// some of the first 256 (they would retry).
		c.PendingSessionWait = waitLong
		c.Logger = slog.New(slog.DiscardHandler) // 1000 refusals
	})
	a := floodAttack{Addr: b.GRPCAddr(), Service: "flood", Tables: tables}
	for i := range n {
		inst := fmt.Sprintf("f-%04d", i)
		a.Instances = append(a.Instances, inst)
		a.Files = append(a.Files, p.files(svcID(a.Service, inst)))
	}
	spec, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "attack.json")
	if err := os.WriteFile(path, spec, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFloodAttacker$", "-test.v")
	cmd.Env = append(os.Environ(), floodEnv+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("attacker: %v", err)
		}
	}()
	out := bufio.NewReader(stdout)
	// The child's lines: "ready" once connected, then the report; go test
	// adds its own lines (=== RUN and so on) around them.
	line := func(prefix string) string {
		t.Helper()
		for {
			l, err := out.ReadString('\n')
			if err != nil {
				t.Fatalf("attacker output: %v", err)
			}
			if s, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(s)
			}
		}
	}
	line("flood: ready")

	profDir := os.Getenv(floodProfileEnv)
	before := settledHeap(t)
	beforeLive := liveHeap()
	peak := sampleHeap(profDir)
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	var rep floodReport
	if err := json.Unmarshal([]byte(line("flood: report ")), &rep); err != nil {
		t.Fatal(err)
	}
	after := settledHeap(t)
	top, topLive := peak()
	if profDir != "" {
		writeProfile(t, filepath.Join(profDir, "settled.pprof"), "heap")
		writeProfile(t, filepath.Join(profDir, "allocs.pprof"), "allocs")
	}
	settled, peaked := int64(after)-int64(before), int64(top)-int64(before)
	t.Logf("%d sessions of %d tables: %d accepted, %d refused, %d denied; heap in use %.1f MB before, peak %+.1f MB (live heap at a GC: %+.1f MB), settled %+.1f MB (%.0f kB per accepted)",
		n, tables, rep.Accepted, rep.Refused, rep.Denied, float64(before)/1e6, float64(peaked)/1e6, (float64(topLive)-float64(beforeLive))/1e6,
		float64(settled)/1e6, float64(settled)/1e3/float64(max(rep.Accepted, 1)))

	var byLimit []string
	for _, l := range []string{"registrations", "pending_sessions", "identity_sessions"} {
		byLimit = append(byLimit, fmt.Sprintf("%s %v", l, b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", l)))
	}
	t.Logf("refusals by limit: %s", strings.Join(byLimit, ", "))
	limit := DefaultMaxRegistrations
	if rep.Other > 0 {
		t.Fatalf("%d unexpected errors, first: %s", rep.Other, rep.FirstErr)
	}
	if rep.Accepted != limit || rep.Refused != n-limit || rep.Denied != 0 {
		t.Fatalf("accepted %d, refused %d, denied %d; want %d, %d, 0", rep.Accepted, rep.Refused, rep.Denied, limit, n-limit)
	}
	if got := b.metricValue(t, "replmesh_broker_limit_refusals_total", "limit", "registrations"); got != float64(n-limit) {
		t.Errorf("registrations refusals counted %v, want %d", got, n-limit)
	}
	if got := len(status(t, b).Instances); got != limit {
		t.Errorf("%d instances registered, want %d", got, limit)
	}
}

// settledHeap returns the heap in use once it stops moving: two readings
// after a GC within 1% of each other (at most 10 s of readings).
func settledHeap(t *testing.T) uint64 {
	t.Helper()
	read := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapInuse
	}
	prev := read()
	for range 50 {
		time.Sleep(200 * time.Millisecond) // a pace, not a synchronization: the readings decide
		cur := read()
		if d := int64(cur) - int64(prev); d*100 <= int64(prev) && -d*100 <= int64(prev) {
			return cur
		}
		prev = cur
	}
	return prev
}

// liveHeap returns the live heap as the last GC marked it.
func liveHeap() uint64 {
	sample := []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}
	rtmetrics.Read(sample)
	if sample[0].Value.Kind() != rtmetrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// sampleHeap samples the heap every 5 ms until the returned func is
// called, which returns the highest readings of the heap in use (live
// objects and garbage not yet collected) and of the live heap (as the
// last GC marked it). With dir set, it writes the heap profile at each new
// peak 10% above the last one written.
func sampleHeap(dir string) func() (inuse, live uint64) {
	var peak, peakLive uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		tk := time.NewTicker(5 * time.Millisecond)
		defer tk.Stop()
		var profiled uint64
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			peakLive = max(peakLive, liveHeap())
			if dir != "" && peak > profiled+profiled/10 {
				profiled = peak
				if f, err := os.Create(filepath.Join(dir, "peak.pprof")); err == nil {
					_ = pprof.Lookup("heap").WriteTo(f, 0)
					f.Close()
				}
			}
			select {
			case <-tk.C:
			case <-stop:
				return
			}
		}
	}()
	return func() (uint64, uint64) {
		close(stop)
		<-done
		return peak, peakLive
	}
}

func writeProfile(t *testing.T, path, name string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}

// TestFloodAttacker is the child of TestSecurity_RegistrationFloodMemory.
func TestFloodAttacker(t *testing.T) {
	path := os.Getenv(floodEnv)
	if path == "" {
		t.Skip("run by TestSecurity_RegistrationFloodMemory")
	}
	spec, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var a floodAttack
	if err := json.Unmarshal(spec, &a); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Connect every identity first (TLS handshakes done), so that the
	// parent's "before" holds the connections and the flood is sessions.
	conns := make([]*grpc.ClientConn, len(a.Files))
	defer func() {
		for _, cc := range conns {
			if cc != nil {
				cc.Close()
			}
		}
	}()
	for i, f := range a.Files {
		src, err := transport.NewTLSSource(f, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if conns[i], err = transport.Dial(a.Addr, transport.Options{TLS: src.ClientConfig(transport.ExpectRole(transport.RoleBroker))}); err != nil {
			t.Fatal(err)
		}
		if _, err := healthpb.NewHealthClient(conns[i]).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("flood: ready")
	in := bufio.NewReader(os.Stdin)
	if _, err := in.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	results := make(chan error, len(a.Instances))
	for i, inst := range a.Instances {
		wg.Go(func() { results <- transport.NewBrokerClient(conns[i]).HoldSession(ctx, &wg, a.register(inst)) })
	}
	var rep floodReport
	for range a.Instances {
		switch err := <-results; {
		case err == nil:
			rep.Accepted++
		case errors.Is(err, transport.ErrTooLarge):
			rep.Refused++
		case errors.Is(err, transport.ErrPermission):
			rep.Denied++
		default:
			rep.Other++
			if rep.FirstErr == "" {
				rep.FirstErr = err.Error()
			}
		}
	}
	buf, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("flood: report %s\n", buf)
	_, _ = io.Copy(io.Discard, in)
}

func (a *floodAttack) register(inst string) *transport.Register {
	tables := make([]transport.TableInfo, a.Tables)
	for j := range tables {
		tables[j] = transport.TableInfo{Table: fmt.Sprintf("table-%04d-%s", j, strings.Repeat("x", 100)), Head: uint64(j)}
	}
	return &transport.Register{Version: transport.ProtocolVersion, Service: a.Service, Instance: inst,
		Addr: "127.0.0.1:7000", Owner: true, Tables: tables}
}
