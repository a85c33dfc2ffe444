package broker

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/replmesh/replmesh/internal/testutil"
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

// BenchmarkMemory1000Instances reports the brokers' heap for 1,000
// registered instances (each with 2 tables and 3 subscriptions), in a
// 3-broker raft cluster with data dirs; the component side of the 1,000
// sessions runs in a child process, so the heap measured (HeapInuse after
// GC, once it stops falling) is the brokers' alone. Metrics:
// "heap-per-broker-B" (the growth from the idle cluster to 1,000
// instances registered, a third of each broker's sessions, every broker
// holding every record, divided by 3), "per-inst-per-broker-B" (that over
// 1,000), "idle-broker-B" (an idle broker's heap: memberlist, raft and its
// badger store), "registry-B/inst" (the records alone, decoded from a
// state exchange and merged) and "state-B/inst" (their encoded size).
func BenchmarkMemory1000Instances(b *testing.B) {
	const n = 1000
	// The registry alone, as a broker that holds none of the sessions gets
	// it: the records decoded from a state exchange and merged. Measured
	// once per process, before any broker of this benchmark has run, so
	// that nothing else moves the heap.
	b.StopTimer()
	memOnce.Do(func() {
		g := &gossipMsg{}
		for i := range n {
			r := memRegister(i)
			g.Instances = append(g.Instances, &instanceRec{Service: r.Service, Instance: r.Instance, Addr: r.Addr, Owner: true,
				Tables: r.Tables, Subs: r.Subscriptions, Session: sessionID{Start: time.Now().UnixNano(), Broker: "b1"},
				Ver: version{Clock: uint64(i), Broker: "b1"}, Connected: true, SeenMs: time.Now().UnixMilli()})
		}
		buf := mustEncode(g)
		g = nil
		before := heapInuse()
		dg, err := decodeGossip(buf)
		if err != nil {
			b.Fatal(err)
		}
		reg := newRegistry()
		for _, rec := range dg.Instances {
			reg.mergeInstance(rec)
		}
		dg = nil
		memRegistry = float64(heapInuse()-before) / n
		memState = float64(len(buf)) / n
		runtime.KeepAlive(reg)
	})
	b.StartTimer()

	for range b.N {
		b.StopTimer()
		base := heapInuse()
		// No heartbeats and no silence checks while it measures: the
		// heartbeat may be at most half the lease.
		dirs := map[string]string{}
		bs := startCluster(b, 3, func(c *Config) {
			if dirs[c.Name] == "" {
				dirs[c.Name] = b.TempDir()
			}
			c.DataDir = dirs[c.Name]
			c.Logger = nil
			c.Lease, c.TombstoneTTL, c.Heartbeat = 2*time.Hour, 2*time.Hour, time.Hour
		})
		waitVoters(b, bs, 3)
		idle := heapInuse()
		ready := make(chan struct{})
		child := testutil.NewChild(b, testutil.ChildSpec{
			Name:   "1000 components",
			Args:   testutil.SelfArgs("TestMemoryClientsChild", 10*time.Minute),
			Env:    append(os.Environ(), memClientsEnv+"="+strings.Join([]string{bs[0].GRPCAddr(), bs[1].GRPCAddr(), bs[2].GRPCAddr()}, ",")),
			Stdin:  true,
			Prefix: "@mem ",
			Report: func(line string, _ time.Time) {
				if line == "ready" {
					close(ready)
				}
			},
		})
		b.StartTimer()
		child.Start()
		select {
		case <-ready:
		case <-child.Exited():
			b.Fatalf("the components' process exited: %v\n%s", child.Err(), child.Output())
		case <-time.After(2 * time.Minute):
			b.Fatalf("the components' process did not register 1000 instances in 2 minutes:\n%s", child.Output())
		}
		waitUntil(b, time.Minute, "1000 instances on every broker", func() bool {
			for _, br := range bs {
				br.mu.Lock()
				k := len(br.reg.instances)
				br.mu.Unlock()
				if k != n {
					return false
				}
			}
			return true
		})
		b.StopTimer()
		grown := float64(heapInuse()-idle) / 3
		b.ReportMetric(grown, "heap-per-broker-B")
		b.ReportMetric(grown/n, "per-inst-per-broker-B")
		b.ReportMetric(float64(idle-base)/3, "idle-broker-B")
		b.ReportMetric(memRegistry, "registry-B/inst")
		b.ReportMetric(memState, "state-B/inst")
		child.Send("quit")
		<-child.Exited()
		for _, br := range bs {
			br.Close()
		}
		b.StartTimer()
	}
}

// heapInuse returns HeapInuse after a GC, once it has stopped falling
// (what earlier brokers left behind is torn down asynchronously).
func heapInuse() int64 {
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

// memRegister is the Register of instance i of BenchmarkMemory1000Instances.
func memRegister(i int) *transport.Register {
	return &transport.Register{
		Version: transport.ProtocolVersion, Service: fmt.Sprintf("svc%03d", i%100), Instance: fmt.Sprintf("inst-%04d", i),
		Addr: fmt.Sprintf("10.0.%d.%d:7000", i/250, i%250), Owner: true,
		Tables: []transport.TableInfo{{Table: "orders", Mode: "push", LogID: "0123456789abcdef", Head: uint64(i)}, {Table: "lines", LogID: "fedcba9876543210", Head: uint64(i)}},
		Subscriptions: []transport.SubInfo{
			{Service: "users", Table: "users"}, {Service: "stores", Table: "stores"}, {Service: "stores", Table: "store_managers"},
		},
	}
}

// memClientsEnv names the brokers (gRPC addresses, comma-separated) the
// child process of BenchmarkMemory1000Instances registers with.
const memClientsEnv = "REPLMESH_MEMBENCH_BROKERS"

// TestMemoryClientsChild is the child process of
// BenchmarkMemory1000Instances: it registers 1,000 instances on the
// brokers in turn, one session each, reads what the brokers push, says
// "@mem ready" and holds the sessions until its stdin says quit or ends.
// Without the environment variable it returns at once.
func TestMemoryClientsChild(t *testing.T) {
	addrs := os.Getenv(memClientsEnv)
	if addrs == "" {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var clients []*transport.BrokerClient
	for _, a := range strings.Split(addrs, ",") {
		cc, err := transport.Dial(a, transport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		clients = append(clients, transport.NewBrokerClient(cc))
	}
	var wg sync.WaitGroup
	for i := range 1000 {
		stream, err := clients[i%len(clients)].Session(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: memRegister(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("register %d: %v", i, err)
		}
		wg.Go(func() {
			for {
				if _, err := stream.Recv(); err != nil {
					return
				}
			}
		})
	}
	fmt.Println("@mem ready")
	for sc := bufio.NewScanner(os.Stdin); sc.Scan() && sc.Text() != "quit"; {
	}
	cancel()
	wg.Wait()
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
