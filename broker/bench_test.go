package broker

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/replmesh/replmesh/transport"
)

// BenchmarkConvergence measures the time from a component's Register on
// one broker until every broker of a 3-broker cluster holds the
// registration, with the gossip timings of LocalConfig ("local", gossip
// every 20ms) and of memberlist's LAN defaults ("lan", gossip every 200ms).
func BenchmarkConvergence(b *testing.B) {
	for _, tc := range []struct {
		name   string
		gossip func() *memberlist.Config
	}{
		{"local", func() *memberlist.Config { return LocalConfig("").Gossip }},
		{"lan", memberlist.DefaultLANConfig},
	} {
		b.Run(tc.name, func(b *testing.B) {
			bs := startCluster(b, 3, func(c *Config) {
				c.Gossip = tc.gossip()
				c.Logger = nil
			})
			cc := dial(b, bs[0].GRPCAddr())
			cl := transport.NewBrokerClient(cc)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			has := func(br *Broker, k instKey) bool {
				br.mu.Lock()
				defer br.mu.Unlock()
				return br.reg.inst(k) != nil
			}
			b.ResetTimer()
			for i := range b.N {
				k := instKey{"svc", fmt.Sprintf("i%d", i)}
				stream, err := cl.Session(ctx)
				if err != nil {
					b.Fatal(err)
				}
				reg := &transport.Register{Version: transport.ProtocolVersion, Service: k.Service, Instance: k.Instance}
				if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: reg}); err != nil {
					b.Fatal(err)
				}
				for !has(bs[1], k) || !has(bs[2], k) {
					time.Sleep(100 * time.Microsecond)
				}
			}
			b.StopTimer()
			cancel()
		})
	}
}

var (
	memOnce     sync.Once
	memRegistry float64 // heap bytes per instance of the registry alone
	memState    float64 // bytes per instance of the encoded state
)

// BenchmarkMemory1000Instances reports the broker's heap for 1,000
// registered instances (each with 2 tables and 3 subscriptions):
// "registry-B/inst" on a broker that only holds the records (as gossiped
// from the broker holding the sessions), and "sessions-B/inst" on the
// broker that also holds the 1,000 open sessions (this figure includes the
// test's own client side of the streams, in the same process).
func BenchmarkMemory1000Instances(b *testing.B) {
	const n = 1000
	// heap returns HeapInuse after a GC, once it has stopped falling (what
	// earlier brokers left behind is torn down asynchronously).
	heap := func() int64 {
		last := int64(-1)
		for range 50 {
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if h := int64(ms.HeapInuse); h == last {
				return h
			} else {
				last = h
			}
			time.Sleep(20 * time.Millisecond)
		}
		return last
	}
	register := func(i int) *transport.Register {
		return &transport.Register{
			Version: transport.ProtocolVersion, Service: fmt.Sprintf("svc%03d", i%100), Instance: fmt.Sprintf("inst-%04d", i),
			Addr: fmt.Sprintf("10.0.%d.%d:7000", i/250, i%250), Owner: true,
			Tables: []transport.TableInfo{{Table: "orders", Mode: "push", LogID: "0123456789abcdef", Head: uint64(i)}, {Table: "lines", LogID: "fedcba9876543210", Head: uint64(i)}},
			Subscriptions: []transport.SubInfo{
				{Service: "users", Table: "users"}, {Service: "stores", Table: "stores"}, {Service: "stores", Table: "store_managers"},
			},
		}
	}
	// The registry alone, as a broker that holds none of the sessions gets
	// it: the records decoded from a state exchange and merged. Measured
	// once per process, before any broker of this benchmark has run, so
	// that nothing else moves the heap.
	b.StopTimer()
	memOnce.Do(func() {
		g := &gossipMsg{}
		for i := range n {
			r := register(i)
			g.Instances = append(g.Instances, &instanceRec{Service: r.Service, Instance: r.Instance, Addr: r.Addr, Owner: true,
				Tables: r.Tables, Subs: r.Subscriptions, Session: sessionID{Start: time.Now().UnixNano(), Broker: "b1"},
				Ver: version{Clock: uint64(i), Broker: "b1"}, Connected: true, SeenMs: time.Now().UnixMilli()})
		}
		buf := mustEncode(g)
		g = nil
		before := heap()
		dg, err := decodeGossip(buf)
		if err != nil {
			b.Fatal(err)
		}
		reg := newRegistry()
		for _, rec := range dg.Instances {
			reg.mergeInstance(rec)
		}
		dg = nil
		memRegistry = float64(heap()-before) / n
		memState = float64(len(buf)) / n
		runtime.KeepAlive(reg)
	})
	b.StartTimer()

	for range b.N {
		b.StopTimer()
		// A broker holding 1,000 open sessions.
		// No heartbeats and no silence checks while it measures: the
		// heartbeat may be at most half the lease.
		bs := startCluster(b, 2, func(c *Config) {
			c.Logger = nil
			c.Lease, c.TombstoneTTL, c.Heartbeat = 2*time.Hour, 2*time.Hour, time.Hour
		})
		before := heap()
		cc, err := transport.Dial(bs[0].GRPCAddr(), transport.Options{})
		if err != nil {
			b.Fatal(err)
		}
		cl := transport.NewBrokerClient(cc)
		ctx, cancel := context.WithCancel(context.Background())
		b.StartTimer()
		for i := range n {
			stream, err := cl.Session(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: register(i)}); err != nil {
				b.Fatal(err)
			}
			if _, err := stream.Recv(); err != nil {
				b.Fatal(err)
			}
		}
		waitUntil(b, time.Minute, "1000 instances on b2", func() bool {
			bs[1].mu.Lock()
			defer bs[1].mu.Unlock()
			return len(bs[1].reg.instances) == n
		})
		b.StopTimer()
		total := heap() - before
		b.ReportMetric(memRegistry, "registry-B/inst")
		b.ReportMetric(float64(total)/n, "sessions-B/inst")
		b.ReportMetric(memState, "state-B/inst")
		cancel()
		cc.Close()
		for _, br := range bs {
			br.Close()
		}
		b.StartTimer()
	}
}

// BenchmarkPromotion measures the broker's share of a failover: from the
// primary's session ending (its process died) to the standby, whose
// session is on another broker of a 3-broker cluster, being told it is
// primary. It is the lease (LocalConfig: 1s) plus at most one
// CheckInterval plus one gossip hop; the metric "over-lease-ms" is the part
// beyond the lease.
func BenchmarkPromotion(b *testing.B) {
	bs := startCluster(b, 3, func(c *Config) { c.Logger = nil })
	lease := bs[0].cfg.Lease
	var over time.Duration
	for i := range b.N {
		b.StopTimer()
		svc := fmt.Sprintf("svc%d", i)
		p := mustConnect(b, bs[1].GRPCAddr(), ownerReg(svc, "a", "127.0.0.1:9001", 5))
		p.waitTopo("a primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
		s := mustConnect(b, bs[2].GRPCAddr(), ownerReg(svc, "b", "127.0.0.1:9002", 5))
		s.waitTopo("b standby of a", func(tp *transport.Topology) bool {
			return tp.Role == transport.RoleStandby && owner(tp, svc).Primary.Instance == "a"
		})
		b.StartTimer()
		t0 := time.Now()
		p.shut()
		s.waitTopo("b primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
		over += time.Since(t0) - lease
		b.StopTimer()
		s.shut()
		b.StartTimer()
	}
	b.ReportMetric(float64(over.Milliseconds())/float64(b.N), "over-lease-ms")
}
