package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger routes logs to t.Log until the test ends (memberlist may log
// while winding down; those lines are dropped).
func testLogger(t testing.TB) *slog.Logger { return testutil.Logger(t) }

// waitUntil polls cond until it is true or the deadline passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitUntil(t, d, what, cond)
}

func ctxT(t testing.TB, d time.Duration) context.Context { return testutil.Context(t, d) }

const waitLong = 20 * time.Second

// startBroker starts a broker with LocalConfig; mutate may change it.
// Its sessions are not ended for silence (Config.silence): the fake
// components heartbeat every 50ms, but a loaded machine can hold their
// frames back for longer than half of the tests' sub-second leases. The
// tests of that cutoff set silence back to 0 (half the lease).
func startBroker(t testing.TB, name string, join []string, mutate func(*Config)) *Broker {
	t.Helper()
	cfg := LocalConfig(name)
	cfg.Join = join
	cfg.Logger = testLogger(t)
	cfg.silence = time.Hour
	// Nor is a broker declared dead for answering a probe late: with
	// LocalConfig's 100ms probe timeout a loaded machine (load 20) keeps
	// the brokers suspecting each other, and the deciding broker passes
	// over the standbys whose sessions are on a broker it holds dead (and
	// removes them after a lease). The tests stop brokers with Close,
	// which leaves the cluster at once; none waits for a failure detector.
	cfg.Gossip.ProbeInterval = 2 * time.Second
	cfg.Gossip.ProbeTimeout = time.Second
	cfg.Gossip.SuspicionMult = 6
	if mutate != nil {
		mutate(&cfg)
	}
	b, err := New(ctxT(t, waitLong), cfg)
	if err != nil {
		t.Fatalf("start broker %s: %v", name, err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// startCluster starts n brokers b1..bn (b2.. join b1) and waits until
// every one sees all n.
func startCluster(t testing.TB, n int, mutate func(*Config)) []*Broker {
	t.Helper()
	bs := []*Broker{startBroker(t, "b1", nil, mutate)}
	for i := 2; i <= n; i++ {
		bs = append(bs, startBroker(t, fmt.Sprintf("b%d", i), []string{bs[0].GossipAddr()}, mutate))
	}
	waitMembers(t, bs, n)
	return bs
}

// waitMembers waits until every broker in bs sees n live members.
func waitMembers(t testing.TB, bs []*Broker, n int) {
	t.Helper()
	waitUntil(t, waitLong, fmt.Sprintf("%d live brokers everywhere", n), func() bool {
		for _, b := range bs {
			b.mu.Lock()
			k := len(b.live)
			b.mu.Unlock()
			if k != n {
				return false
			}
		}
		return true
	})
}

func status(t testing.TB, b *Broker) *transport.StatusResponse {
	t.Helper()
	st, err := b.Status(context.Background(), &transport.StatusRequest{Version: transport.ProtocolVersion})
	if err != nil {
		t.Fatalf("status of %s: %v", b.Name(), err)
	}
	return st
}

func findInstance(st *transport.StatusResponse, service, instance string) *transport.InstanceInfo {
	for i := range st.Instances {
		if st.Instances[i].Service == service && st.Instances[i].Instance == instance {
			return &st.Instances[i]
		}
	}
	return nil
}

func findOwner(owners []transport.ServiceOwner, service string) *transport.ServiceOwner {
	for i := range owners {
		if owners[i].Service == service {
			return &owners[i]
		}
	}
	return nil
}

// waitEverywhere waits until cond holds for the Status of every broker.
func waitEverywhere(t testing.TB, bs []*Broker, what string, cond func(*transport.StatusResponse) bool) {
	t.Helper()
	waitUntil(t, waitLong, what+" on every broker", func() bool {
		for _, b := range bs {
			if !cond(status(t, b)) {
				return false
			}
		}
		return true
	})
}

// fakeComp is a component as the broker sees it: a raw Session stream.
type fakeComp struct {
	t      testing.TB
	reg    transport.Register
	topts  transport.Options // how it dials (TLS for the security tests)
	addr   string            // broker it is connected to
	cc     *grpc.ClientConn
	stream transport.SessionClient
	cancel context.CancelFunc
	frames chan *transport.SessionResponse
	errc   chan error // the stream's end
	wg     sync.WaitGroup
	last   *transport.Topology
	seen   []*transport.Topology // every topology received since the stream opened
	silent bool                  // send no heartbeats (a blackholed component)
	sendMu sync.Mutex            // one Send at a time
	pings  atomic.Int64          // the last Ping sent
	// lastBeat is the last heartbeat received.
	lastBeat atomic.Pointer[transport.SessionResponse]
}

// send sends f on the current stream.
func (c *fakeComp) send(f *transport.SessionRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(f)
}

// connect opens a session on the broker at addr and returns the component
// and the broker's first answer (or the error ending the stream).
func connect(t testing.TB, addr string, reg transport.Register) (*fakeComp, error) {
	t.Helper()
	if reg.Version == 0 {
		reg.Version = transport.ProtocolVersion
	}
	c := &fakeComp{t: t, reg: reg}
	if err := c.open(addr); err != nil {
		return nil, err
	}
	t.Cleanup(c.close)
	return c, nil
}

func mustConnect(t testing.TB, addr string, reg transport.Register) *fakeComp {
	t.Helper()
	c, err := connect(t, addr, reg)
	if err != nil {
		t.Fatalf("session of %s/%s with %s: %v", reg.Service, reg.Instance, addr, err)
	}
	return c
}

// open opens a session, retrying (as a component does) while the broker
// refuses it because the instance's previous session, closed a moment
// ago, still looks live to it (ErrInstanceInUse until the close has
// spread).
func (c *fakeComp) open(addr string) error {
	deadline := time.Now().Add(waitLong)
	for {
		err := c.openWith(addr, &transport.SessionRequest{Kind: transport.SessionRegister, Register: &c.reg})
		if !errors.Is(err, transport.ErrInstanceInUse) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond) // a component's reconnect backoff, not a synchronization
	}
}

func (c *fakeComp) openWith(addr string, first *transport.SessionRequest) error {
	cc, err := transport.Dial(addr, c.topts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	// A refusal before the Register is read comes with the first Recv.
	stream, err := transport.NewBrokerClient(cc).OpenSession(ctx, first)
	if err != nil {
		cancel()
		cc.Close()
		return err
	}
	c.addr, c.cc, c.stream, c.cancel = addr, cc, stream, cancel
	c.frames = make(chan *transport.SessionResponse, 4096)
	c.errc = make(chan error, 1)
	if !c.silent {
		// Heartbeats, as a component sends them: the broker ends a
		// session silent for half its lease.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			tk := time.NewTicker(50 * time.Millisecond)
			defer tk.Stop()
			for {
				select {
				case <-tk.C:
					if c.send(&transport.SessionRequest{Kind: transport.SessionHeartbeat, Ping: c.pings.Add(1)}) != nil {
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			f, err := stream.Recv()
			if err != nil {
				c.errc <- transport.FromStatus(err)
				return
			}
			if f.Kind == transport.SessionHeartbeat {
				c.lastBeat.Store(f)
				continue
			}
			select {
			case c.frames <- f:
			default:
				c.errc <- errors.New("test component: frame buffer full")
				return
			}
		}
	}()
	// The first answer is a topology or the error ending the stream.
	select {
	case f := <-c.frames:
		if f.Kind != transport.SessionTopology || f.Topology == nil {
			c.shut()
			return fmt.Errorf("first frame is kind %d, not a topology", f.Kind)
		}
		c.last = f.Topology
		c.seen = []*transport.Topology{f.Topology}
		return nil
	case err := <-c.errc:
		c.shut()
		return err
	case <-time.After(waitLong):
		c.shut()
		return errors.New("no answer to Register")
	}
}

// shut ends the current stream and waits for its receiver.
func (c *fakeComp) shut() {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.wg.Wait()
	c.cc.Close()
	c.cancel = nil
}

func (c *fakeComp) close() { c.shut() }

// next returns the next topology received, skipping heartbeats; it fails
// the test if the stream ends or none comes within d.
func (c *fakeComp) next(d time.Duration) *transport.Topology {
	c.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case f := <-c.frames:
			if f.Kind == transport.SessionTopology {
				c.last = f.Topology
				c.seen = append(c.seen, f.Topology)
				return f.Topology
			}
		case err := <-c.errc:
			c.t.Fatalf("%s/%s: session ended: %v", c.reg.Service, c.reg.Instance, err)
		case <-timer.C:
			c.t.Fatalf("%s/%s: no topology within %s (last %+v)", c.reg.Service, c.reg.Instance, d, c.last)
		}
	}
}

// drain returns the topologies already received and not yet read.
func (c *fakeComp) drain() []*transport.Topology {
	var out []*transport.Topology
	for {
		select {
		case f := <-c.frames:
			if f.Kind == transport.SessionTopology {
				c.last = f.Topology
				c.seen = append(c.seen, f.Topology)
				out = append(out, f.Topology)
			}
		default:
			return out
		}
	}
}

// waitTopo reads topologies until cond holds for one.
func (c *fakeComp) waitTopo(what string, cond func(*transport.Topology) bool) *transport.Topology {
	c.t.Helper()
	if c.last != nil && cond(c.last) {
		return c.last
	}
	deadline := time.Now().Add(waitLong)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("%s/%s: timed out waiting for a topology where %s (last %+v)", c.reg.Service, c.reg.Instance, what, c.last)
		}
		if t := c.next(left); cond(t) {
			return t
		}
	}
}

// waitEnd waits for the stream to end and returns its error.
func (c *fakeComp) waitEnd() error {
	c.t.Helper()
	timer := time.NewTimer(waitLong)
	defer timer.Stop()
	for {
		select {
		case <-c.frames:
		case err := <-c.errc:
			return err
		case <-timer.C:
			c.t.Fatalf("%s/%s: session did not end", c.reg.Service, c.reg.Instance)
		}
	}
}

// mustBeOpen fails the test if the session has ended.
func (c *fakeComp) mustBeOpen() {
	c.t.Helper()
	select {
	case err := <-c.errc:
		c.t.Fatalf("%s/%s: session ended early: %v", c.reg.Service, c.reg.Instance, err)
	default:
	}
}

// update sends a SessionUpdate.
func (c *fakeComp) update(tables []transport.TableInfo, subs []transport.SubInfo) {
	c.t.Helper()
	if err := c.send(&transport.SessionRequest{Kind: transport.SessionUpdate, Tables: tables, Subscriptions: subs}); err != nil {
		c.t.Fatalf("send update: %v", err)
	}
}

// rehome ends the current session and opens one on another broker from the
// last topology's broker list (not the current one).
func (c *fakeComp) rehome() {
	c.t.Helper()
	old := c.addr
	brokers := slices.Clone(c.last.Brokers)
	c.shut()
	var errs []error
	for _, a := range brokers {
		if a == old {
			continue
		}
		if err := c.open(a); err != nil {
			errs = append(errs, err)
			continue
		}
		return
	}
	c.t.Fatalf("re-home from %s: no broker of %v took the session: %v", old, brokers, errs)
}

func owner(t *transport.Topology, service string) transport.ServiceOwner {
	if o := findOwner(t.Owners, service); o != nil {
		return *o
	}
	return transport.ServiceOwner{}
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := transport.Dial(addr, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// stateForTest returns the registry's records, encoded, for comparison
// between brokers.
func (b *Broker) stateForTest() []byte {
	b.mu.Lock()
	g := b.reg.snapshot()
	b.mu.Unlock()
	return mustEncode(g)
}

// metricValue returns the value of a counter or gauge of the broker; with
// labels (name, value, name, value...) of the one carrying them (0 when
// none has been counted yet).
func (b *Broker) metricValue(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := b.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	has := func(m *dto.Metric) bool {
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == labels[i] && l.GetValue() == labels[i+1] }) {
				return false
			}
		}
		return true
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !has(m) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	if len(labels) > 0 {
		return 0
	}
	t.Fatalf("no metric %s", name)
	return 0
}
