package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// fakeOwner is an owner instance whose Digest answer the test sets.
type fakeOwner struct {
	mu     sync.Mutex
	digest transport.DigestResponse
	err    error
}

func (f *fakeOwner) Subscribe(transport.SubscribeServer) error {
	return fmt.Errorf("%w: fake owner", transport.ErrUnavailable)
}

func (f *fakeOwner) Get(context.Context, *transport.GetRequest) (*transport.GetResponse, error) {
	return nil, fmt.Errorf("%w: fake owner", transport.ErrUnavailable)
}

func (f *fakeOwner) Digest(context.Context, *transport.DigestRequest) (*transport.DigestResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	d := f.digest
	return &d, nil
}

func (f *fakeOwner) set(d transport.DigestResponse, err error) {
	f.mu.Lock()
	f.digest, f.err = d, err
	f.mu.Unlock()
}

// serveFake serves a fakeOwner on a free port and returns it with its
// address.
func serveFake(t *testing.T) (*fakeOwner, string) {
	t.Helper()
	f := &fakeOwner{}
	return f, serve(t, func(s *transport.Server) { transport.RegisterReplicationServer(s, f) })
}

// register holds a broker session for reg until the test ends.
func register(t *testing.T, brokerAddr string, reg *transport.Register) {
	t.Helper()
	cc, err := transport.Dial(brokerAddr, transport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := transport.NewBrokerClient(cc).Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg.Version = transport.ProtocolVersion
	if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: reg}); err != nil {
		t.Fatal(err)
	}
	if f, err := stream.Recv(); err != nil || f.Topology == nil {
		t.Fatalf("register %s/%s: %+v %v", reg.Service, reg.Instance, f, err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	// Heartbeats, as a component sends them: a broker ends a session that
	// sends nothing for half its lease.
	beating := make(chan struct{})
	go func() {
		defer close(beating)
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-tk.C:
				if stream.Send(&transport.SessionRequest{Kind: transport.SessionHeartbeat}) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-drained; <-beating; cc.Close() })
}

// verify compares owner instances by their digests at equal seqs and
// fails (exit 1) on any difference, on a standby that never reaches the
// primary's seq, on another history and on an unreachable standby; a
// consumer reporting a diverged replica fails it too, a consumer that is
// merely behind does not.
func TestVerify_Outcomes(t *testing.T) {
	brokerAddr := startBroker(t, "bv")
	f1, a1 := serveFake(t)
	f2, a2 := serveFake(t)
	tables := []transport.TableInfo{{Table: "t", LogID: "L1", Epoch: 1, Head: 5}}
	register(t, brokerAddr, &transport.Register{Service: "fake", Instance: "f1", Addr: a1, Owner: true, Tables: tables})
	register(t, brokerAddr, &transport.Register{Service: "fake", Instance: "f2", Addr: a2, Owner: true, Tables: tables})
	var primary, standby *fakeOwner
	var standbyName string
	waitUntil(t, 20*time.Second, "a primary and a standby", func() bool {
		for _, o := range registry(t, brokerAddr).Owners {
			if o.Service == "fake" && o.Primary.Instance != "" && len(o.Standbys) == 1 {
				primary, standby, standbyName = f1, f2, "f2"
				if o.Primary.Instance == "f2" {
					primary, standby, standbyName = f2, f1, "f1"
				}
				return true
			}
		}
		return false
	})
	good := transport.DigestResponse{LogID: "L1", Seq: 5, Rows: 3, Hash: []byte{1, 2, 3}}
	primary.set(good, nil)
	br := "-broker=" + brokerAddr

	run := func(t *testing.T, wantCode int, args ...string) verifyReport {
		t.Helper()
		r := ctl(t, nil, append([]string{br, "-o", "json", "verify"}, append(args, "fake/t")...)...)
		var rep verifyReport
		if r.code != wantCode || json.Unmarshal([]byte(r.stdout), &rep) != nil {
			t.Fatalf("verify: want exit %d and a JSON report, got %v", wantCode, r)
		}
		if (wantCode == 0) != rep.OK {
			t.Fatalf("exit %d with ok=%v", r.code, rep.OK)
		}
		if wantCode != 0 && !strings.Contains(r.stderr, "replctl: verify fake/t: ") {
			t.Fatalf("no failure message on stderr: %q", r.stderr)
		}
		return rep
	}
	result := func(rep verifyReport, instance string) verifyInstance {
		for _, in := range rep.Instances {
			if in.Instance == instance {
				return in
			}
		}
		t.Fatalf("no %s in %+v", instance, rep.Instances)
		return verifyInstance{}
	}

	t.Run("equal", func(t *testing.T) {
		standby.set(good, nil)
		rep := run(t, 0)
		if got := result(rep, standbyName); got.Result != resEqual || got.Seq != 5 {
			t.Fatalf("standby: %+v", got)
		}
	})
	t.Run("differs", func(t *testing.T) {
		bad := good
		bad.Hash = []byte{9, 9, 9}
		standby.set(bad, nil)
		if got := result(run(t, 1), standbyName); got.Result != resDiffers {
			t.Fatalf("standby: %+v", got)
		}
	})
	t.Run("never at the primary's seq", func(t *testing.T) {
		behind := good
		behind.Seq = 4
		standby.set(behind, nil)
		rep := run(t, 1, "-wait", "1s")
		if got := result(rep, standbyName); got.Result != resUnverified || rep.Rounds < 2 {
			t.Fatalf("standby: %+v after %d rounds", got, rep.Rounds)
		}
	})
	t.Run("other history", func(t *testing.T) {
		other := good
		other.LogID = "L2"
		standby.set(other, nil)
		if got := result(run(t, 1, "-wait", "0s"), standbyName); got.Result != resOtherHistory {
			t.Fatalf("standby: %+v", got)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		standby.set(good, fmt.Errorf("%w: going away", transport.ErrUnavailable))
		if got := result(run(t, 1, "-wait", "0s"), standbyName); got.Result != resUnreachable {
			t.Fatalf("standby: %+v", got)
		}
	})
	t.Run("consumers", func(t *testing.T) {
		standby.set(good, nil)
		register(t, brokerAddr, &transport.Register{Service: "c", Instance: "behind",
			Subscriptions: []transport.SubInfo{{Service: "fake", Table: "t", Seq: 2, Lag: 3, State: "streaming"}}})
		waitUntil(t, 20*time.Second, "consumer registered", func() bool { return len(registry(t, brokerAddr).Instances) == 3 })
		rep := run(t, 0, "-wait", "200ms")
		if got := result(rep, "behind"); got.Result != resBehind || got.Role != transport.RoleConsumer {
			t.Fatalf("consumer: %+v", got)
		}
		register(t, brokerAddr, &transport.Register{Service: "c", Instance: "diverged",
			Subscriptions: []transport.SubInfo{{Service: "fake", Table: "t", Seq: 7, State: "diverged"}}})
		waitUntil(t, 20*time.Second, "consumer registered", func() bool { return len(registry(t, brokerAddr).Instances) == 4 })
		if got := result(run(t, 1, "-wait", "0s"), "diverged"); got.Result != resDiverged {
			t.Fatalf("consumer: %+v", got)
		}
	})
}
