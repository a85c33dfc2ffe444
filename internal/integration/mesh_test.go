package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/replica"
	"github.com/replmesh/replmesh/transport"
)

// secureMesh is the mesh the security suite attacks, with the whole
// security on: three brokers gossiping with a key and a cluster label,
// serving mTLS with Config.RequireIdentity and a policy; the owner service
// stores (primary stores-1 and standby stores-2, MinSyncStandbys 1) on mTLS
// with an access policy; and the consumer products/products-1 replicating
// stores/managers, found through the brokers. Everything runs in this
// process on 127.0.0.1 port 0.
type secureMesh struct {
	t       *testing.T
	pki     *testPKI
	key     []byte
	brokers []*broker.Broker
	logs    *testutil.LogBuffer // the brokers' JSON logs, memberlist's included

	ownerCfg  func(*replica.Config)
	dirs      map[string]string // data dir by stores instance
	primary   *replica.Component
	standby   *replica.Component
	tp, ts    *replica.OwnedTable
	consumer  *replica.Component
	r         *replica.Replica
	closeOnce map[*replica.Component]*sync.Once
}

// meshOptions change the mesh of one test.
type meshOptions struct {
	broker func(*broker.Config)  // applied to every broker's config
	owner  func(*replica.Config) // applied to both stores instances' configs
}

const (
	meshLabel   = "replmesh-test"
	meshLease   = 2 * time.Second
	meshWait    = 30 * time.Second
	storesTable = "managers"
)

// meshPolicy is the access policy of brokers and owners: products reads
// stores/managers; nothing else is granted (orders reads nothing).
func meshPolicy(t testing.TB) *modes.AccessPolicy {
	t.Helper()
	p := modes.NewAccessPolicy()
	if err := p.Allow("stores", storesTable, "products"); err != nil {
		t.Fatal(err)
	}
	return p
}

// brokerLogger logs at Debug into logs (for memberlist's lines) and at the
// test's level to t.Log.
func brokerLogger(t testing.TB, logs *testutil.LogBuffer) *slog.Logger {
	return slog.New(slog.NewMultiHandler(
		slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}),
		testutil.Logger(t).Handler()))
}

// relaxedGossip keeps brokers from declaring each other dead for a probe
// answered late on a loaded machine (as the broker package's tests do):
// no test here waits for a failure detector.
func relaxedGossip(c *broker.Config) {
	c.Gossip.ProbeInterval = 2 * time.Second
	c.Gossip.ProbeTimeout = time.Second
	c.Gossip.SuspicionMult = 6
}

func newSecureMesh(t *testing.T, o meshOptions) *secureMesh {
	t.Helper()
	m := &secureMesh{
		t: t, pki: newTestPKI(t), key: []byte("0123456789abcdef0123456789abcdef"),
		logs: &testutil.LogBuffer{}, dirs: map[string]string{}, closeOnce: map[*replica.Component]*sync.Once{},
		ownerCfg: o.owner,
	}
	policy := meshPolicy(t)
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("b%d", i)
		cfg := broker.LocalConfig(name)
		cfg.Logger = brokerLogger(t, m.logs)
		relaxedGossip(&cfg)
		cfg.Lease = meshLease
		cfg.GossipKey = m.key
		cfg.ClusterLabel = meshLabel
		src := m.pki.source(roleID(transport.RoleBroker, name))
		cfg.Transport.TLS = src.ServerConfig()
		// Raft messages and joins go to the other brokers as this broker.
		cfg.PeerTransport.TLS = src.ClientConfig(transport.ExpectRole(transport.RoleBroker))
		cfg.RequireIdentity = true
		cfg.Policy = policy
		if i > 1 {
			cfg.Join = []string{m.brokers[0].GossipAddr()}
		}
		if o.broker != nil {
			o.broker(&cfg)
		}
		b, err := broker.New(ctxT(t, meshWait), cfg)
		if err != nil {
			t.Fatalf("broker %s: %v", name, err)
		}
		t.Cleanup(func() { b.Close() })
		m.brokers = append(m.brokers, b)
	}
	waitUntil(t, meshWait, "3 live brokers on every broker", func() bool {
		for _, b := range m.brokers {
			if got := brokerNames(statusOf(t, b)); !slices.Equal(got, []string{"b1:alive", "b2:alive", "b3:alive"}) {
				return false
			}
		}
		return true
	})

	m.primary, m.tp = m.openStores("stores-1")
	waitUntil(t, meshWait, "stores-1 primary", func() bool { r, _ := m.primary.Role(); return r == "primary" })
	m.standby, m.ts = m.openStores("stores-2")
	waitFollowing(t, m.tp, m.ts)

	m.consumer = m.open("products", "products-1", t.TempDir(), false, nil)
	r, err := m.consumer.Subscribe(ctxT(t, meshWait), replica.SubscribeOptions{Service: "stores", Table: storesTable})
	if err != nil {
		t.Fatal(err)
	}
	m.r = r
	for i := range 20 {
		putOne(t, m.tp, fmt.Appendf(nil, "s%d", i), fmt.Appendf(nil, "manager-%d", i))
	}
	m.settle()
	return m
}

// open opens a component with a certificate of its own identity, talking
// to the three brokers; it is closed at the end of the test.
func (m *secureMesh) open(service, instance, dir string, owner bool, mutate func(*replica.Config)) *replica.Component {
	m.t.Helper()
	c := component(m.t, service, instance, dir, "", m.brokerAddrs(), owner, func(c *replica.Config) {
		c.TLS = m.pki.source(svcID(service, instance))
		if mutate != nil {
			mutate(c)
		}
	})
	once := new(sync.Once)
	m.closeOnce[c] = once
	m.t.Cleanup(func() { m.close(c) })
	return c
}

// close closes c (once).
func (m *secureMesh) close(c *replica.Component) {
	m.closeOnce[c].Do(func() { c.Close() })
}

// openStores opens (or reopens, on its data dir) an instance of stores and
// its table.
func (m *secureMesh) openStores(instance string) (*replica.Component, *replica.OwnedTable) {
	m.t.Helper()
	dir, ok := m.dirs[instance]
	if !ok {
		dir = m.t.TempDir()
		m.dirs[instance] = dir
	}
	c := m.open("stores", instance, dir, true, func(c *replica.Config) {
		c.MinSyncStandbys = 1
		c.SyncTimeout = 5 * time.Second
		c.AccessPolicy = meshPolicy(m.t)
		if m.ownerCfg != nil {
			m.ownerCfg(c)
		}
	})
	tbl, err := c.Own(storesTable)
	if err != nil {
		m.t.Fatal(err)
	}
	return c, tbl
}

func (m *secureMesh) brokerAddrs() []string { return grpcAddrs(m.brokers...) }

// settle waits until the standby and the consumer hold the primary's
// head, so that the state read next is at rest.
func (m *secureMesh) settle() {
	m.t.Helper()
	converge(m.t, m.tp, m.r)
	waitUntil(m.t, meshWait, "the standby holding the primary's head", func() bool { return m.ts.Head() == m.tp.Head() })
}

// meshState is what an attack must leave as it was.
type meshState struct {
	registry string // every broker's, once they agree
	role     string // the primary's role and epoch
	epoch    uint64
	digests  map[string]transport.DigestResponse
}

// state reads the registry (waiting until the three brokers agree on it;
// only the records of services, when given), the primary's role and the
// digests of the primary, the standby and the consumer's replica.
func (m *secureMesh) state(services ...string) meshState {
	m.t.Helper()
	var s meshState
	waitUntil(m.t, meshWait, "the brokers agreeing on the registry", func() bool {
		var views []string
		for _, b := range m.brokers {
			views = append(views, registryView(statusOf(m.t, b), services...))
		}
		s.registry = views[0]
		return views[1] == views[0] && views[2] == views[0]
	})
	s.role, s.epoch = m.primary.Role()
	s.digests = map[string]transport.DigestResponse{}
	for name, d := range map[string]func(a, b []byte) (transport.DigestResponse, error){
		"primary": m.tp.Digest, "standby": m.ts.Digest, "consumer": m.r.Digest,
	} {
		got, err := d(nil, nil)
		if err != nil {
			m.t.Fatalf("digest of the %s: %v", name, err)
		}
		s.digests[name] = got
	}
	return s
}

// unchanged fails the test unless the mesh's state is before.
func (m *secureMesh) unchanged(before meshState, services ...string) {
	m.t.Helper()
	after := m.state(services...)
	if after.registry != before.registry {
		m.t.Errorf("the registry changed:\n%s\nwas:\n%s", after.registry, before.registry)
	}
	if after.role != before.role || after.epoch != before.epoch {
		m.t.Errorf("the primary is %s at epoch %d, was %s at epoch %d", after.role, after.epoch, before.role, before.epoch)
	}
	for _, name := range slices.Sorted(maps.Keys(before.digests)) {
		b, a := before.digests[name], after.digests[name]
		if a.Seq != b.Seq || a.LogID != b.LogID || a.Rows != b.Rows || !bytes.Equal(a.Hash, b.Hash) {
			m.t.Errorf("digest of the %s: %x at %d (%d rows, log %s), was %x at %d (%d rows, log %s)",
				name, a.Hash, a.Seq, a.Rows, a.LogID, b.Hash, b.Seq, b.Rows, b.LogID)
		}
	}
}

// writeReplicates writes key on the primary and checks the write is
// acknowledged (with MinSyncStandbys 1: the standby holds it when Put
// returns) and reaches the consumer.
func (m *secureMesh) writeReplicates(key string) {
	m.t.Helper()
	seq := putOne(m.t, m.tp, []byte(key), []byte("after the attack"))
	if h := m.ts.Head(); h < seq {
		m.t.Fatalf("write %d acknowledged while the standby holds %d", seq, h)
	}
	converge(m.t, m.tp, m.r)
	v, ok, err := m.r.Get([]byte(key))
	if err != nil || !ok || string(v) != "after the attack" {
		m.t.Fatalf("the consumer reads %s = %q, %v, %v", key, v, ok, err)
	}
}

// brokerCounter sums the values of the counter name with labels (k, v
// pairs) over the brokers.
func (m *secureMesh) brokerCounter(name string, labels ...string) float64 {
	m.t.Helper()
	var n float64
	for _, b := range m.brokers {
		n += counterValue(m.t, b.Metrics(), name, labels...)
	}
	return n
}

// componentCounter reads the counter name with labels of component c.
func componentCounter(t testing.TB, c *replica.Component, name string, labels ...string) float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Metrics())
	return counterValue(t, reg, name, labels...)
}

// counterValue sums the samples of the counter name whose labels include
// labels (k, v pairs).
func counterValue(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, mt := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range mt.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue metrics
				}
			}
			n += mt.GetCounter().GetValue()
		}
	}
	return n
}

// statusOf reads b's whole Status, following its pages, as the broker's
// own process does (a call with no gRPC peer is not authorized).
func statusOf(t testing.TB, b *broker.Broker) *transport.StatusResponse {
	t.Helper()
	var all *transport.StatusResponse
	token := ""
	for {
		st, err := b.Status(context.Background(), &transport.StatusRequest{Version: transport.ProtocolVersion, PageToken: token})
		if err != nil {
			t.Fatalf("status of %s: %v", b.Name(), err)
		}
		if all == nil {
			all = st
		} else {
			all.Owners = append(all.Owners, st.Owners...)
			all.Instances = append(all.Instances, st.Instances...)
		}
		if token = st.NextPageToken; token == "" {
			return all
		}
	}
}

func brokerNames(st *transport.StatusResponse) []string {
	var out []string
	for _, b := range st.Brokers {
		out = append(out, b.Name+":"+b.State)
	}
	slices.Sort(out)
	return out
}

// registryView renders what Status says of the registry, leaving out what
// moves by itself (heads, last-seen times, replication progress, which
// broker answers or holds a session); with services, only their records.
func registryView(st *transport.StatusResponse, services ...string) string {
	keep := func(s string) bool { return len(services) == 0 || slices.Contains(services, s) }
	var b strings.Builder
	fmt.Fprintf(&b, "brokers %v\n", brokerNames(st))
	owners := slices.Clone(st.Owners)
	slices.SortFunc(owners, func(x, y transport.ServiceOwner) int { return strings.Compare(x.Service, y.Service) })
	for _, o := range owners {
		if !keep(o.Service) {
			continue
		}
		var tables []string
		for _, tb := range o.Tables {
			tables = append(tables, fmt.Sprintf("%s@%d/%s", tb.Table, tb.Epoch, tb.LogID))
		}
		fmt.Fprintf(&b, "owner %s epoch %d primary %s@%s standbys %v tables %v\n", o.Service, o.Epoch,
			o.Primary.Instance, o.Primary.Addr, o.Standbys, tables)
	}
	var insts []string
	for _, i := range st.Instances {
		if !keep(i.Service) {
			continue
		}
		var subs []string
		for _, s := range i.Subscriptions {
			subs = append(subs, s.Service+"/"+s.Table)
		}
		var tables []string
		for _, tb := range i.Tables {
			tables = append(tables, tb.Table)
		}
		insts = append(insts, fmt.Sprintf("instance %s/%s at %s role %s tables %v subs %v", i.Service, i.Instance, i.Addr, i.Role, tables, subs))
	}
	slices.Sort(insts)
	for _, i := range insts {
		fmt.Fprintln(&b, i)
	}
	fmt.Fprintf(&b, "overrides %v\n", st.Overrides)
	return b.String()
}

// ownerOf returns the owner record of service in st.
func ownerOf(st *transport.StatusResponse, service string) *transport.ServiceOwner {
	for i := range st.Owners {
		if st.Owners[i].Service == service {
			return &st.Owners[i]
		}
	}
	return nil
}

// heapInUse returns the heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// rawSession is a broker Session opened by hand, as an attacker's tool
// (or a fake component) would: it sends the Register it is given and
// heartbeats, and keeps the last topology received.
type rawSession struct {
	cancel context.CancelFunc
	cc     *grpc.ClientConn
	wg     sync.WaitGroup
	last   atomic.Pointer[transport.Topology]
	ended  chan error // the stream's end, once
}

// openSession registers reg on the broker at addr with the dial options
// o, and returns once the broker answered: its first topology, or the
// error that ended the stream. The session is closed at the end of the
// test.
func openSession(t testing.TB, addr string, o transport.Options, reg transport.Register) (*rawSession, error) {
	t.Helper()
	if reg.Version == 0 {
		reg.Version = transport.ProtocolVersion
	}
	cc, err := transport.Dial(addr, o)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &rawSession{cancel: cancel, cc: cc, ended: make(chan error, 1)}
	// A refusal before the Register is read comes with the first Recv.
	stream, err := transport.NewBrokerClient(cc).OpenSession(ctx, &transport.SessionRequest{Kind: transport.SessionRegister, Register: &reg})
	if err != nil {
		s.close()
		return nil, err
	}
	first := make(chan struct{})
	var sendMu sync.Mutex
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for ping := int64(1); ; ping++ {
			select {
			case <-tk.C:
				sendMu.Lock()
				err := stream.Send(&transport.SessionRequest{Kind: transport.SessionHeartbeat, Ping: ping})
				sendMu.Unlock()
				if err != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		once := sync.OnceFunc(func() { close(first) })
		defer once()
		for {
			f, err := stream.Recv()
			if err != nil {
				s.ended <- transport.FromStatus(err)
				return
			}
			if f.Kind == transport.SessionTopology && f.Topology != nil {
				s.last.Store(f.Topology)
				once()
			}
		}
	}()
	select {
	case <-first:
	case <-time.After(meshWait):
		s.close()
		return nil, errors.New("no answer to Register")
	}
	if s.last.Load() == nil {
		err := <-s.ended
		s.close()
		return nil, err
	}
	t.Cleanup(s.close)
	return s, nil
}

func (s *rawSession) close() {
	s.cancel()
	s.wg.Wait()
	s.cc.Close()
}

// wantDenied fails unless err is PermissionDenied naming every one of
// names.
func wantDenied(t testing.TB, err error, names ...string) {
	t.Helper()
	wantRefused(t, err, transport.ErrPermission, names...)
}

// wantExhausted fails unless err is ResourceExhausted naming every one of
// names.
func wantExhausted(t testing.TB, err error, names ...string) {
	t.Helper()
	wantRefused(t, err, transport.ErrTooLarge, names...)
}

// wantRefused fails unless err wraps want and names every one of names.
func wantRefused(t testing.TB, err, want error, names ...string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v, want %v", err, want)
	}
	for _, n := range names {
		if !strings.Contains(err.Error(), n) {
			t.Errorf("%q does not name %q", err, n)
		}
	}
}
