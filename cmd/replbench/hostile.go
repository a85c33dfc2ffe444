package main

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
	"runtime/metrics"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/internal/benchkit"
	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// What a hostile peer can cost, with the limits at their defaults and
// mTLS with identities on. The victim (an owner, a broker) runs in this
// process; the attacker is a child process, so that its own buffers do not
// count. The figures are the victim's Go heap in use (after a GC) and this
// process's RSS, before the attack and once the attack is in place and the
// heap has settled:
//
//   - owner, never-reading subscribers: one identity (allowed to read the
//     table) opens -hostile Subscribe streams over several connections
//     (fewer than MaxConcurrentStreams each) and reads nothing after the
//     handshake; MaxCallerSubscriptions refuses those past it;
//   - owner, stream flood: the same on one connection, where
//     MaxConcurrentStreams holds the streams past it back in the client;
//   - broker, one identity: -hostile registrations of other instances of
//     its service, each refused (an identity registers only itself);
//   - broker, many identities of one service: -hostile instances, each
//     with its own certificate, registering -hostile-tables tables;
//     MaxRegistrations refuses those past it.

// hostileRows is the rows of the attacked owner's table: far more than
// one never-reading stream can be handed before flow control stops it.
const hostileRows = 20_000

// Attack.Window: an owner answers a stream at once unless the stream is
// held back in the client (MaxConcurrentStreams); a broker answers every
// registration, however long a flood of them takes.
const (
	ownerAttackWindow  = 5 * time.Second
	brokerAttackWindow = setupTimeout
)

// perConnection is how many streams the attacker puts on one connection
// when it spreads them (under DefaultMaxConcurrentStreams).
const perConnection = 128

// attack is what a hostile child does (JSON in the file envAttack names).
type attack struct {
	Kind  string `json:"kind"` // attackSubscribe or attackRegister
	Addr  string `json:"addr"`
	N     int    `json:"n"`     // streams or sessions opened
	Conns int    `json:"conns"` // connections of the one identity (len(Files) == 1)
	// Files: one identity's TLS files (all N on it), or N of them (one
	// identity and connection each).
	Files []transport.TLSFiles `json:"files"`
	// Register: the service, the instance of session i (Instances[i]),
	// and the tables each registration lists.
	Service   string   `json:"service"`
	Instances []string `json:"instances"`
	Tables    int      `json:"tables"`
	// Window is how long the attacker waits for answers; what is
	// unanswered then was held back.
	Window time.Duration `json:"window"`
}

const (
	attackSubscribe = "subscribe"
	attackRegister  = "register"
	childHostile    = "hostile"
)

// attackReport is the child's account of its attack, printed once it is
// in place.
type attackReport struct {
	Accepted int    `json:"accepted"`
	Refused  int    `json:"refused"`   // ResourceExhausted: a limit
	Denied   int    `json:"denied"`    // PermissionDenied
	Pending  int    `json:"pending"`   // unanswered after hostileOpenWindow
	Other    int    `json:"other"`     // any other error
	FirstErr string `json:"first_err"` // the first other error
	// AnsweredNs: from the first attempt to the last answer.
	AnsweredNs float64 `json:"answered_ns"`
}

// hostileChild is a running attacker.
type hostileChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startHostile starts a child running a, and returns once the attack is
// in place, with the child's report.
func (b *bench) startHostile(ctx context.Context, a attack) (*hostileChild, attackReport, error) {
	var rep attackReport
	spec, err := json.Marshal(a)
	if err != nil {
		return nil, rep, err
	}
	path := filepath.Join(b.dir, "attack.json")
	if err := os.WriteFile(path, spec, 0o600); err != nil {
		return nil, rep, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, rep, fmt.Errorf("find own executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+childHostile, envAttack+"="+path)
	cmd.Stderr = b.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, rep, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, rep, err
	}
	if err := cmd.Start(); err != nil {
		return nil, rep, fmt.Errorf("start attacker: %w", err)
	}
	c := &hostileChild{cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &rep)
	}
	if err != nil {
		return nil, rep, errors.Join(fmt.Errorf("attacker's report %q: %w", line, err), c.stop())
	}
	return c, rep, nil
}

// stop ends the attack: the child closes everything when its stdin ends.
func (c *hostileChild) stop() error {
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		return fmt.Errorf("attacker: %w", err)
	}
	return nil
}

// memory is the victim's memory at one moment.
type memory struct {
	heap uint64 // Go heap in use after a GC
	rss  int64  // this process's VmRSS (0: unknown)
}

func measureMemory() memory {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memory{heap: ms.HeapInuse, rss: benchkit.ProcStatus(0, "VmRSS")["VmRSS"]}
}

// settledMemory measures until the heap in use stops moving (two readings
// 200 ms apart within 1%, at most 10 s): the victim has done what the
// attack made it do.
func settledMemory(ctx context.Context) memory {
	prev := measureMemory()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
		cur := measureMemory()
		d := int64(cur.heap) - int64(prev.heap)
		if d < 0 {
			d = -d
		}
		if d*100 <= int64(prev.heap) {
			return cur
		}
		prev = cur
	}
	return prev
}

// liveHeap returns the live heap as the last GC marked it.
func liveHeap() uint64 {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return sample[0].Value.Uint64()
}

// samplePeakHeap samples the heap every 10 ms until the returned func is
// called, which returns the highest readings of the heap in use (live
// objects and the garbage not yet collected, which the GC lets grow to
// about the live heap again) and of the live heap as the last GC marked it.
func samplePeakHeap() func() (inuse, live uint64) {
	var peak, peakLive uint64
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			peakLive = max(peakLive, liveHeap())
			select {
			case <-t.C:
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

// resetPeakRSS resets this process's VmHWM to its current RSS (Linux;
// elsewhere nothing, and VmHWM is unknown anyway).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

// growth is after minus before, signed.
func growth(before, after uint64) float64 { return float64(after) - float64(before) }

// per divides v by n (0 for none).
func per(v float64, n int) float64 {
	if n <= 0 {
		return 0
	}
	return v / float64(n)
}

// attackNotes says how the attack went.
func attackNotes(a attack, rep attackReport) string {
	s := fmt.Sprintf("%d tried: %d accepted, %d refused (limit), %d denied, %d held back unanswered after %s; all answered in %.1f s",
		a.N, rep.Accepted, rep.Refused, rep.Denied, rep.Pending, a.Window, rep.AnsweredNs/1e9)
	if rep.Other > 0 {
		s += fmt.Sprintf(", %d other errors (first: %s)", rep.Other, rep.FirstErr)
	}
	return s
}

// runAttack measures the victim's memory around a, and adds the figures
// of workload name: the attempts accepted, refused, the heap growth in
// total and per attempt and per accepted one, and the bound the limit puts
// on it (limit accepted ones at the measured cost each).
func (b *bench) runAttack(ctx context.Context, name, what string, a attack, limit int, limitName string) error {
	benchkit.Settle()
	before := settledMemory(ctx)
	beforeLive := liveHeap()
	resetPeakRSS()
	stopPeak := samplePeakHeap()
	child, rep, err := b.startHostile(ctx, a)
	if err != nil {
		stopPeak()
		return err
	}
	after := settledMemory(ctx)
	peakHeap, peakLive := stopPeak()
	peakRSS := benchkit.ProcStatus(0, "VmHWM")["VmHWM"]
	if err := child.stop(); err != nil {
		return err
	}
	if rep.Other > 0 {
		return fmt.Errorf("%s: %d unexpected errors, first: %s", what, rep.Other, rep.FirstErr)
	}
	heap := growth(before.heap, after.heap)
	b.add(result{Workload: name, Figure: what + ": refused or denied", Value: float64(rep.Refused + rep.Denied + rep.Pending), Unit: unitCount,
		Notes: attackNotes(a, rep)})
	b.add(result{Workload: name, Figure: what + ": heap growth", Value: heap, Unit: unitBytes,
		Notes: fmt.Sprintf("Go heap in use after GC, %.1f MB before; during the attack the heap peaked %+.1f MB (the live heap at a GC %+.1f MB); RSS %+.1f MB settled, %+.1f MB at its peak",
			float64(before.heap)/1e6, growth(before.heap, peakHeap)/1e6, growth(beforeLive, peakLive)/1e6,
			growth(uint64(before.rss), uint64(after.rss))/1e6, growth(uint64(before.rss), uint64(peakRSS))/1e6)})
	b.add(result{Workload: name, Figure: what + ": heap per attempt", Value: per(heap, a.N), Unit: unitKB,
		Notes: fmt.Sprintf("over %d attempts", a.N)})
	if rep.Accepted > 0 {
		each := per(heap, rep.Accepted)
		b.add(result{Workload: name, Figure: what + ": heap per accepted", Value: each, Unit: unitKB,
			Notes: fmt.Sprintf("bound: %s %d × this = %.1f MB", limitName, limit, each*float64(limit)/1e6)})
	}
	return nil
}

// hostileOwner attacks an owner on mTLS with identities and the default
// limits, whose table holds hostileRows rows.
func (b *bench) hostileOwner(ctx context.Context, sec *pki) (err error) {
	dir, err := b.subdir("hostile-owner")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	owner, tbl, err := b.openOwner(ctx, filepath.Join(dir, "owner"), "127.0.0.1:0", sec.owner())
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, closeAll(owner)) }()
	if _, err := b.loadRows(ctx, tbl, hostileRows); err != nil {
		return err
	}
	evil, err := sec.issue(sec.id(consumerService, "evil"))
	if err != nil {
		return err
	}
	n := b.opts.hostile
	const name = "security hostile owner"
	limits := fmt.Sprintf("MaxCallerSubscriptions %d, MaxConcurrentStreams %d", replica.DefaultMaxCallerSubscriptions, replica.DefaultMaxConcurrentStreams)
	b.progress("%s: %d never-reading subscribers of one identity (%s)", name, n, limits)
	a := attack{Kind: attackSubscribe, Addr: owner.Addr(), N: n, Conns: (n + perConnection - 1) / perConnection,
		Files: []transport.TLSFiles{evil}, Window: ownerAttackWindow}
	if err := b.runAttack(ctx, name, "never-reading subscribers", a, replica.DefaultMaxCallerSubscriptions, "MaxCallerSubscriptions"); err != nil {
		return err
	}
	b.progress("%s: stream flood of %d on one connection", name, n)
	a.Conns = 1
	return b.runAttack(ctx, name, "stream flood, 1 connection", a, replica.DefaultMaxConcurrentStreams, "MaxConcurrentStreams")
}

// hostileBroker attacks a broker on mTLS with RequireIdentity and the
// default limits.
func (b *bench) hostileBroker(ctx context.Context) (err error) {
	dir, err := b.subdir("hostile-broker")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	sec, err := newPKI(dir, 0, b.logger)
	if err != nil {
		return err
	}
	src, err := sec.sourceOf(transport.Identity{TrustDomain: securityTrustDomain, Role: transport.RoleBroker, Name: "bench-broker"})
	if err != nil {
		return err
	}
	cfg := broker.DefaultConfig()
	cfg.Name, cfg.GRPCAddr, cfg.BindAddr = "bench-broker", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Transport.TLS = src.ServerConfig()
	cfg.RequireIdentity = true
	cfg.Logger = b.logger
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	br, err := broker.New(ctx, cfg)
	if err != nil {
		return fmt.Errorf("start broker: %w", err)
	}
	defer func() { err = errors.Join(err, br.Close()) }()

	n, tables := b.opts.hostile, b.opts.hostileTables
	const name = "security hostile broker"
	const service = "flood"
	one, err := sec.issue(sec.id(service, "f-0000"))
	if err != nil {
		return err
	}
	instances := make([]string, n)
	for i := range instances {
		instances[i] = fmt.Sprintf("x-%04d", i)
	}
	b.progress("%s: %d registrations of other instances by one identity", name, n)
	a := attack{Kind: attackRegister, Addr: br.GRPCAddr(), N: n, Conns: (n + perConnection - 1) / perConnection,
		Files: []transport.TLSFiles{one}, Service: service, Instances: instances, Tables: tables, Window: brokerAttackWindow}
	if err := b.runAttack(ctx, name, "registrations by one identity", a, 0, ""); err != nil {
		return err
	}
	b.progress("%s: %d identities of one service registering %d tables each", name, n, tables)
	a.Files = a.Files[:0]
	for i := range n {
		a.Instances[i] = fmt.Sprintf("f-%04d", i)
		f, err := sec.issue(sec.id(service, a.Instances[i]))
		if err != nil {
			return err
		}
		a.Files = append(a.Files, f)
	}
	what := fmt.Sprintf("%d identities of one service, %d tables each", n, tables)
	return b.runAttack(ctx, name, what, a, broker.DefaultMaxRegistrations, "MaxRegistrations")
}

// childHostileRun is the attacker: it runs the attack of envAttack, prints
// its report, and holds everything open until its stdin ends.
func childHostileRun() error {
	spec, err := os.ReadFile(os.Getenv(envAttack))
	if err != nil {
		return err
	}
	var a attack
	if err := json.Unmarshal(spec, &a); err != nil {
		return fmt.Errorf("attack: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns, err := a.dial()
	defer func() {
		for _, cc := range conns {
			cc.Close()
		}
	}()
	if err != nil {
		return err
	}
	results := make(chan error, a.N)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range a.N {
		cc := conns[i%len(conns)]
		switch a.Kind {
		case attackSubscribe:
			wg.Go(func() { results <- subscribeNeverReading(ctx, cc) })
		case attackRegister:
			wg.Go(func() { results <- transport.NewBrokerClient(cc).HoldSession(ctx, &wg, a.register(i)) })
		default:
			return fmt.Errorf("unknown attack %q", a.Kind)
		}
	}
	var rep attackReport
	start := time.Now()
	timeout := time.After(a.Window)
	for answered := 0; answered < a.N; answered++ {
		var err error
		select {
		case err = <-results:
		case <-timeout:
			rep.Pending = a.N - answered
			answered = a.N
			continue
		}
		rep.AnsweredNs = float64(time.Since(start))
		switch {
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
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// dial opens the attack's connections: Conns of the one identity, or one
// per identity.
func (a *attack) dial() ([]*grpc.ClientConn, error) {
	check := transport.ExpectService(ownerService)
	if a.Kind == attackRegister {
		check = transport.ExpectRole(transport.RoleBroker)
	}
	// A client that reads nothing: fixed windows (no BDP growth).
	extra := []grpc.DialOption{grpc.WithInitialWindowSize(64 << 10), grpc.WithInitialConnWindowSize(64 << 10)}
	logger := slog.New(slog.DiscardHandler)
	var conns []*grpc.ClientConn
	count := a.Conns
	if len(a.Files) > 1 {
		count = len(a.Files)
	}
	for i := range max(1, count) {
		src, err := transport.NewTLSSource(a.Files[i%len(a.Files)], logger)
		if err != nil {
			return conns, err
		}
		cc, err := transport.Dial(a.Addr, transport.Options{TLS: src.ClientConfig(check)}, extra...)
		if err != nil {
			return conns, err
		}
		conns = append(conns, cc)
	}
	return conns, nil
}

// register returns the Register of session i.
func (a *attack) register(i int) *transport.Register {
	tables := make([]transport.TableInfo, a.Tables)
	for j := range tables {
		tables[j] = transport.TableInfo{Table: fmt.Sprintf("table-%04d-%s", j, strings.Repeat("x", 100)), Head: uint64(j)}
	}
	return &transport.Register{Version: transport.ProtocolVersion, Service: a.Service, Instance: a.Instances[i],
		Addr: "127.0.0.1:7000", Owner: true, Tables: tables}
}

// subscribeNeverReading opens a Subscribe stream and reads nothing after
// the handshake; it stays open until ctx ends.
func subscribeNeverReading(ctx context.Context, cc *grpc.ClientConn) error {
	cl := transport.NewReplicationClient(cc)
	_, _, err := cl.OpenSubscribe(ctx, &transport.Open{Version: transport.ProtocolVersion, Service: consumerService,
		Instance: "evil", Table: tableName})
	return err
}
