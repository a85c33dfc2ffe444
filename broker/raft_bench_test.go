package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// BenchmarkRaft_Decisions measures the decisions (primary grants, each a
// committed and applied raft entry) a 3-broker cluster with data dirs
// sustains, proposed by the leader from 64 goroutines at once: the metric
// "decisions/s".
func BenchmarkRaft_Decisions(b *testing.B) {
	bs := raftCluster(b, 3)
	l := leaderOf(b, bs)
	b.ResetTimer()
	t0 := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := l.raft.propose(ctx, &command{Kind: cmdGrant, Service: fmt.Sprintf("svc%d", i), Instance: "a", Epoch: 1})
				cancel()
				if err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := range b.N {
		next <- i
	}
	close(next)
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "decisions/s")
}

// BenchmarkRaft_RegistrationsAndGrants measures the whole decision path a
// component sees, in a 3-broker cluster with data dirs: b.N owner
// instances, each of a new service, register on the brokers in turn from
// 64 goroutines; each registration counts once its session is told it is
// primary (the registration gossiped or held by the leader, the grant
// decided, committed through raft, applied and pushed). The metric
// "grants/s" is registrations answered with a committed grant per second.
func BenchmarkRaft_RegistrationsAndGrants(b *testing.B) {
	bs := raftCluster(b, 3)
	leaderOf(b, bs)
	b.ResetTimer()
	t0 := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done() // also when a wait below fails the benchmark
			for i := int(next.Add(1)) - 1; i < b.N; i = int(next.Add(1)) - 1 {
				c := &fakeComp{t: b, silent: true, reg: ownerReg(fmt.Sprintf("svc%06d", i), "a", "127.0.0.1:9001", 1)}
				c.reg.Version = transport.ProtocolVersion
				if err := c.open(bs[i%len(bs)].GRPCAddr()); err != nil {
					b.Error(err)
					continue
				}
				b.Cleanup(c.close)
				c.waitTopo("primary", func(tp *transport.Topology) bool { return tp.Role == transport.RolePrimary })
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "grants/s")
}

// BenchmarkRaft_LeaderLoss measures, in a 3-broker cluster (1s lease),
// the time from the raft leader's death (Close) to the first decision
// committed by the two left: the metric "resume-ms".
func BenchmarkRaft_LeaderLoss(b *testing.B) {
	var total time.Duration
	for i := range b.N {
		b.StopTimer()
		bs := raftCluster(b, 3)
		l := leaderOf(b, bs)
		rest := others(bs, l)
		b.StartTimer()
		t0 := time.Now()
		l.Close()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			err := rest[0].raft.propose(ctx, &command{Kind: cmdMode, Service: "s", Table: fmt.Sprintf("t%d", i), Mode: "pull"})
			cancel()
			if err == nil {
				break
			}
			if time.Since(t0) > waitLong {
				b.Fatal("no decision after the leader's loss")
			}
		}
		total += time.Since(t0)
		b.StopTimer()
		for _, x := range bs {
			x.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "resume-ms")
}
