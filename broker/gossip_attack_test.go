package broker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"

	"github.com/replmesh/replmesh/internal/testutil"
	"github.com/replmesh/replmesh/transport"
)

// userMsg is memberlist's message type of a delegate's message (its
// net.go: pingMsg = 0 ... userMsg = 8). A UDP packet of this byte and a
// payload reaches Delegate.NotifyMsg of an unencrypted member.
const userMsg = 8

// watchLogs makes the broker log JSON records into the returned buffer
// (as well as to the test log).
func watchLogs(t testing.TB) (*testutil.LogBuffer, func(*Config)) {
	buf := &testutil.LogBuffer{}
	return buf, func(c *Config) {
		c.Logger = slog.New(slog.NewJSONHandler(io.MultiWriter(buf, testWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
}

// testWriter writes to t.Log while the test runs.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	testutil.Logger(w.t).Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// waitLog waits until more than n records of logs match, and returns how
// many do.
func waitLog(t testing.TB, logs *testutil.LogBuffer, what string, n int, match func(string) bool) int {
	t.Helper()
	var got int
	waitUntil(t, waitLong, what, func() bool {
		got = len(logs.Records(t, match))
		return got > n
	})
	return got
}

// registryView renders what a broker's Status says of the registry (not
// of the brokers), leaving out what moves by itself (last seen times).
func registryView(st *transport.StatusResponse) string {
	var b strings.Builder
	for _, o := range st.Owners {
		fmt.Fprintf(&b, "owner %s epoch %d primary %s@%s standbys %v tables %v\n", o.Service, o.Epoch,
			o.Primary.Instance, o.Primary.Addr, o.Standbys, o.Tables)
	}
	for _, i := range st.Instances {
		fmt.Fprintf(&b, "instance %s/%s at %s role %s on %s tables %v subs %v\n", i.Service, i.Instance, i.Addr, i.Role,
			i.Broker, i.Tables, i.Subscriptions)
	}
	fmt.Fprintf(&b, "overrides %v\n", st.Overrides)
	return b.String()
}

// rogueDelegate is the delegate of a memberlist node run by an attacker:
// it offers state as its registry in push/pull exchanges.
type rogueDelegate struct{ state []byte }

func (d *rogueDelegate) NodeMeta(int) []byte                 { return nil }
func (d *rogueDelegate) NotifyMsg([]byte)                    {}
func (d *rogueDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (d *rogueDelegate) LocalState(bool) []byte              { return d.state }
func (d *rogueDelegate) MergeRemoteState(buf []byte, _ bool) {}

// rogueNode starts a memberlist node on 127.0.0.1 that is no broker: its
// key (nil: none) and label are the attacker's, state is what it offers as
// registry state.
func rogueNode(t testing.TB, name string, key []byte, label string, state []byte) *memberlist.Memberlist {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	mc.BindAddr, mc.BindPort, mc.AdvertisePort = "127.0.0.1", 0, 0
	mc.SecretKey = key
	mc.Label = label
	mc.Delegate = &rogueDelegate{state: state}
	mc.LogOutput = testWriter{t}
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatalf("start rogue node: %v", err)
	}
	t.Cleanup(func() { ml.Shutdown() })
	return ml
}

// nodeOf is the memberlist node of broker b, to send to.
func nodeOf(t testing.TB, b *Broker) *memberlist.Node {
	t.Helper()
	host, port, err := net.SplitHostPort(b.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return &memberlist.Node{Name: b.Name(), Addr: net.ParseIP(host), Port: uint16(p)}
}

// sendUDP sends one datagram to addr.
func sendUDP(t testing.TB, addr string, pkt []byte) {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
}

// A payload claiming 2^32-1 records reaches the gossip decoder of a running
// broker by every path memberlist has: a UDP packet (10 bytes), a TCP user
// message and the registry state of a push/pull. The broker drops it, stays
// up, allocates next to nothing and keeps its registry. (Before the decoder
// was bounded, the first packet made the broker allocate 32 GiB: the
// process died.)
func TestBroker_SurvivesOversizedGossipClaims(t *testing.T) {
	logs, mutate := watchLogs(t)
	b := startBroker(t, "b1", nil, mutate)
	mustConnect(t, b.GRPCAddr(), ownerReg("stores", "stores-1", "127.0.0.1:9001", 5))
	waitEverywhere(t, []*Broker{b}, "stores-1 primary", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && o.Primary.Instance == "stores-1"
	})
	before := registryView(status(t, b))
	payload := claim("i", math.MaxUint32, false)

	dropped := testutil.Msg("dropped gossip message", "dropped remote registry state")
	tests := []struct {
		name string
		send func(t *testing.T)
	}{
		{"UDP packet, 10 bytes", func(t *testing.T) {
			pkt := append([]byte{userMsg}, payload...)
			if len(pkt) != 10 {
				t.Fatalf("packet is %d bytes, want 10", len(pkt))
			}
			sendUDP(t, b.GossipAddr(), pkt)
		}},
		{"TCP user message", func(t *testing.T) {
			if err := rogueNode(t, "rogue-tcp", nil, "", nil).SendReliable(nodeOf(t, b), payload); err != nil {
				t.Fatalf("send: %v", err)
			}
		}},
		{"TCP push/pull state", func(t *testing.T) {
			if _, err := rogueNode(t, "rogue-pushpull", nil, "", payload).Join([]string{b.GossipAddr()}); err != nil {
				t.Fatalf("join: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := len(logs.Records(t, dropped))
			start := heapAllocated()
			tt.send(t)
			waitLog(t, logs, "the payload dropped", n, dropped)
			if got := heapAllocated() - start; got > 64<<20 {
				t.Errorf("the process allocated %d MiB while the broker decoded a 9-byte payload", got>>20)
			}
			if got := registryView(status(t, b)); got != before {
				t.Errorf("registry changed:\n%s\nwas:\n%s", got, before)
			}
		})
	}
}

// forged returns what an attacker would gossip: service stores now served
// by "evil" at the attacker's address, at the last epoch there is (so that
// no grant could ever follow), and the same for orders, which has not
// registered yet. The owner records go in the field builds before raft
// read them.
func forged() []byte {
	return encodeLegacy(&legacyGossip{
		Owners: []*ownerRec{
			{Service: "stores", Epoch: math.MaxUint64, Primary: "evil"},
			{Service: "orders", Epoch: math.MaxUint64, Primary: "evil"},
		},
		Instances: []*instanceRec{
			{Service: "stores", Instance: "evil", Addr: "127.0.0.66:6666", Owner: true, Connected: true,
				Session: sessionID{Start: math.MaxInt64, Broker: "b1"}, Ver: version{Clock: math.MaxUint64, Broker: "b1"}},
			{Service: "stores", Instance: "stores-1", Addr: "127.0.0.66:6666", Owner: true, Connected: true,
				Session: sessionID{Start: math.MaxInt64, Broker: "b1"}, Ver: version{Clock: math.MaxUint64, Broker: "b1"}},
		},
	})
}

// rejected matches memberlist's lines for gossip it could not decrypt or
// authenticate: a packet, or a stream.
func rejected(msg string) bool {
	return strings.HasPrefix(msg, "memberlist: Decrypt packet failed") ||
		strings.HasPrefix(msg, "memberlist: discarding packet with unacceptable label") ||
		strings.HasPrefix(msg, "memberlist: failed to receive") ||
		strings.HasPrefix(msg, "memberlist: Failed push/pull merge")
}

// securedCluster starts brokers b1 and b2 gossiping with key and label
// "prod", logging into the returned buffer, with owner stores-1 granted.
func securedCluster(t *testing.T, key []byte) ([]*Broker, *testutil.LogBuffer) {
	logs, watch := watchLogs(t)
	bs := startCluster(t, 2, func(c *Config) { c.GossipKey = key; c.ClusterLabel = "prod"; watch(c) })
	mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "stores-1", "127.0.0.1:9001", 5))
	waitEverywhere(t, bs, "stores-1 primary", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		return o != nil && o.Primary.Instance == "stores-1" && o.Epoch > 0
	})
	return bs, logs
}

func liveNames(b *Broker) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.live {
		out = append(out, m.Name)
	}
	return out
}

// With a gossip key, a forged gossip packet from a node that is not a
// member, unencrypted or encrypted with another key, changes nothing in the
// registry, by any path: and the owner of a service the forgery named
// is still granted its lease.
func TestGossipAttack_ForgedRecordsChangeNothing(t *testing.T) {
	key := []byte("0123456789abcdef")
	bs, logs := securedCluster(t, key)
	before := registryView(status(t, bs[0]))
	other := []byte("fedcba9876543210")
	payload := forged()

	tests := []struct {
		name string
		send func(t *testing.T)
	}{
		{"unencrypted UDP packet", func(t *testing.T) {
			sendUDP(t, bs[0].GossipAddr(), append([]byte{userMsg}, payload...))
		}},
		{"unencrypted UDP packet with the label", func(t *testing.T) {
			if err := rogueNode(t, "rogue-plain-udp", nil, "prod", nil).SendBestEffort(nodeOf(t, bs[0]), payload); err != nil {
				t.Fatalf("send: %v", err)
			}
		}},
		{"UDP packet with another key", func(t *testing.T) {
			if err := rogueNode(t, "rogue-udp", other, "prod", nil).SendBestEffort(nodeOf(t, bs[0]), payload); err != nil {
				t.Fatalf("send: %v", err)
			}
		}},
		{"TCP message with another key", func(t *testing.T) {
			// The broker drops the stream; the sender may or may not see it.
			_ = rogueNode(t, "rogue-tcp", other, "prod", nil).SendReliable(nodeOf(t, bs[0]), payload)
		}},
		{"push/pull state, unencrypted", func(t *testing.T) {
			_, _ = rogueNode(t, "rogue-plain", nil, "prod", payload).Join([]string{bs[0].GossipAddr()})
		}},
		{"push/pull state with another key", func(t *testing.T) {
			_, _ = rogueNode(t, "rogue-key", other, "prod", payload).Join([]string{bs[0].GossipAddr()})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := len(logs.Records(t, rejected))
			tt.send(t)
			waitLog(t, logs, "the forged gossip refused", n, rejected)
			for _, b := range bs {
				if got := registryView(status(t, b)); got != before {
					t.Fatalf("registry of %s changed:\n%s\nwas:\n%s", b.Name(), got, before)
				}
			}
		})
	}
	// The brokers still grant: orders registers now and becomes primary
	// of an epoch a grant gave (not the forged one).
	mustConnect(t, bs[1].GRPCAddr(), ownerReg("orders", "orders-1", "127.0.0.1:9002", 1))
	waitEverywhere(t, bs, "orders-1 granted", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "orders")
		return o != nil && o.Primary.Instance == "orders-1" && o.Epoch > 0 && o.Epoch < math.MaxUint64
	})
}

// With a gossip key, a memberlist node without it (or with another one)
// cannot join, even under a name that sorts first: the members and the
// deciding broker stay as they were.
func TestGossipAttack_RogueMemberCannotJoin(t *testing.T) {
	key := []byte("0123456789abcdef")
	bs, logs := securedCluster(t, key)
	for _, tt := range []struct {
		name string
		key  []byte
	}{
		{"no key", nil},
		{"another key", []byte("fedcba9876543210")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lead := leaderOf(t, bs)
			n := len(logs.Records(t, rejected))
			rogue := rogueNode(t, "0-rogue-"+strings.ReplaceAll(tt.name, " ", "-"), tt.key, "prod", nil)
			if got, err := rogue.Join([]string{bs[0].GossipAddr(), bs[1].GossipAddr()}); err == nil || got != 0 {
				t.Fatalf("rogue joined: contacted %d, err %v", got, err)
			}
			waitLog(t, logs, "the rogue refused", n, rejected)
			for _, b := range bs {
				if got := liveNames(b); !slices.Equal(got, []string{"b1", "b2"}) {
					t.Errorf("members of %s: %v, want [b1 b2]", b.Name(), got)
				}
			}
			if got := leaderOf(t, bs); got != lead {
				t.Errorf("deciding broker changed: leader was %s, is %s", lead.Name(), got.Name())
			}
		})
	}
}

// Without a key (Config.InsecureGossip, or a loopback bind) gossip is open,
// as Config documents: a rogue node joins the member list and a forged
// packet's instance records (soft state) are merged, so the tests above
// would see the attack land without the key. The decisions are not
// gossip's: the primary and its epoch come from Raft, so the forged owner
// record at epoch 2^64-1 changes neither.
func TestGossipAttack_WithoutKeyGossipIsOpen(t *testing.T) {
	bs := startCluster(t, 2, nil)
	mustConnect(t, bs[0].GRPCAddr(), ownerReg("stores", "stores-1", "127.0.0.1:9001", 5))
	var epoch uint64
	waitEverywhere(t, bs, "stores-1 primary", func(st *transport.StatusResponse) bool {
		o := findOwner(st.Owners, "stores")
		if o == nil || o.Primary.Instance != "stores-1" {
			return false
		}
		epoch = o.Epoch
		return true
	})
	sendUDP(t, bs[0].GossipAddr(), append([]byte{userMsg}, forged()...))
	waitEverywhere(t, bs, "the forged instance merged", func(st *transport.StatusResponse) bool {
		for _, in := range st.Instances {
			if in.Service == "stores" && in.Instance == "evil" {
				return true
			}
		}
		return false
	})
	for _, b := range bs {
		st, err := b.Status(context.Background(), &transport.StatusRequest{Version: transport.ProtocolVersion})
		if err != nil {
			t.Fatal(err)
		}
		if o := findOwner(st.Owners, "stores"); o == nil || o.Primary.Instance != "stores-1" || o.Epoch != epoch {
			t.Fatalf("%s: the forged owner record decided: %+v, want stores-1 at epoch %d", b.Name(), o, epoch)
		}
	}
	rogue := rogueNode(t, "0-rogue", nil, "", nil)
	if n, err := rogue.Join([]string{bs[0].GossipAddr()}); err != nil || n == 0 {
		t.Fatalf("rogue join: %d, %v", n, err)
	}
	waitUntil(t, waitLong, "the rogue in the member list", func() bool {
		return slices.Contains(liveNames(bs[0]), "0-rogue")
	})
}
