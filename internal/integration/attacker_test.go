package integration

import (
	"bytes"
	"encoding/binary"
	"math"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"
	"google.golang.org/grpc"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

// The attacker's tools: gossip payloads written by hand in the brokers'
// wire format (version byte 1, then the msgpack message), a memberlist
// node that is no broker, and raw clients of the brokers' and owners' gRPC
// services holding certificates of other identities.

// gossipUserMsg is memberlist's message type of a delegate's message
// (memberlist net.go: pingMsg = 0 ... userMsg = 8): a UDP packet of this
// byte and a payload reaches an unencrypted broker's gossip decoder.
const gossipUserMsg = 8

// The registry records as brokers gossip them (broker/registry.go), with
// the fields a forgery needs.
type (
	forgedSession struct {
		Start  int64  `msgpack:"s"`
		Broker string `msgpack:"b"`
	}
	forgedVersion struct {
		Clock  uint64 `msgpack:"c"`
		Broker string `msgpack:"b"`
	}
	forgedInstance struct {
		Service   string        `msgpack:"svc"`
		Instance  string        `msgpack:"inst"`
		Addr      string        `msgpack:"addr,omitempty"`
		Owner     bool          `msgpack:"own,omitempty"`
		Session   forgedSession `msgpack:"sess"`
		Ver       forgedVersion `msgpack:"ver"`
		Connected bool          `msgpack:"conn,omitempty"`
	}
	forgedOwner struct {
		Service string `msgpack:"svc"`
		Epoch   uint64 `msgpack:"ep"`
		Primary string `msgpack:"p"`
	}
	forgedMsg struct {
		Instances []forgedInstance `msgpack:"i,omitempty"`
		Owners    []forgedOwner    `msgpack:"o,omitempty"`
	}
)

// evilAddr is where the forgeries send consumers.
const evilAddr = "127.0.0.66:6666"

// forgedRegistry is what an attacker gossips: stores now served by "evil"
// at evilAddr at the last epoch there is (no grant could ever follow),
// and stores-1's record rewritten to the attacker's address, both with the
// newest session and version a broker could have written.
func forgedRegistry(t testing.TB) []byte {
	t.Helper()
	sess := forgedSession{Start: math.MaxInt64, Broker: "b1"}
	ver := forgedVersion{Clock: math.MaxUint64, Broker: "b1"}
	msg := forgedMsg{
		Owners: []forgedOwner{{Service: "stores", Epoch: math.MaxUint64, Primary: "evil"}},
		Instances: []forgedInstance{
			{Service: "stores", Instance: "evil", Addr: evilAddr, Owner: true, Session: sess, Ver: ver, Connected: true},
			{Service: "stores", Instance: "stores-1", Addr: evilAddr, Owner: true, Session: sess, Ver: ver, Connected: true},
		},
	}
	var buf bytes.Buffer
	buf.WriteByte(1) // the gossip payload version
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(&msg); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// oversizedClaim is the 10-byte UDP packet that killed a broker: a user
// message whose payload is a map with one key, "i" (the instance records),
// claiming 2^32-1 records in four bytes.
func oversizedClaim() []byte {
	pkt := []byte{gossipUserMsg, 1, 0x81, 0xa1, 'i', 0xdd}
	return binary.BigEndian.AppendUint32(pkt, math.MaxUint32)
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

// rogueDelegate offers state as its registry in push/pull exchanges.
type rogueDelegate struct{ state []byte }

func (d *rogueDelegate) NodeMeta(int) []byte             { return nil }
func (d *rogueDelegate) NotifyMsg([]byte)                {}
func (d *rogueDelegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *rogueDelegate) LocalState(bool) []byte          { return d.state }
func (d *rogueDelegate) MergeRemoteState([]byte, bool)   {}

// rogueNode starts a memberlist node on 127.0.0.1 that is no broker, with
// the attacker's key (nil: none) and label, offering state as registry.
func rogueNode(t testing.TB, name string, key []byte, label string, state []byte) *memberlist.Memberlist {
	t.Helper()
	mc := memberlist.DefaultLocalConfig()
	mc.Name = name
	mc.BindAddr, mc.BindPort, mc.AdvertisePort = "127.0.0.1", 0, 0
	mc.SecretKey = key
	mc.Label = label
	mc.Delegate = &rogueDelegate{state: state}
	mc.Logger = nil
	mc.LogOutput = logWriter{t}
	ml, err := memberlist.Create(mc)
	if err != nil {
		t.Fatalf("start rogue node: %v", err)
	}
	t.Cleanup(func() { ml.Shutdown() })
	return ml
}

// logWriter writes memberlist's lines to the test's logger.
type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	testLogger(w.t).Debug(strings.TrimSpace(string(p)))
	return len(p), nil
}

// gossipNode is broker b's memberlist node, to send to.
func gossipNode(t testing.TB, b *broker.Broker) *memberlist.Node {
	t.Helper()
	host, port, err := net.SplitHostPort(b.GossipAddr())
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: b.Name(), Addr: net.ParseIP(host), Port: uint16(p)}
}

// gossipRejected matches memberlist's lines for gossip it could not
// decrypt or authenticate: a packet, or a stream.
func gossipRejected(msg string) bool {
	for _, p := range []string{
		"memberlist: Decrypt packet failed",
		"memberlist: discarding packet with unacceptable label",
		"memberlist: failed to receive",
		"memberlist: Failed push/pull merge",
	} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// replicationClient dials an owner of stores with identity id.
func replicationClient(t testing.TB, p *testPKI, addr string, id transport.Identity, extra ...grpc.DialOption) *transport.ReplicationClient {
	t.Helper()
	cc, err := transport.Dial(addr, p.dialAs(id, transport.ExpectService("stores")), extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return transport.NewReplicationClient(cc)
}

// brokerClient dials the broker at addr with identity id.
func brokerClient(t testing.TB, p *testPKI, addr string, id transport.Identity) *transport.BrokerClient {
	t.Helper()
	cc, err := transport.Dial(addr, p.dialAs(id, transport.ExpectRole(transport.RoleBroker)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return transport.NewBrokerClient(cc)
}
