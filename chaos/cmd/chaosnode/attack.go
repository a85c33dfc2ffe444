package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/transport"
)

// The attacker (-role attacker): a hostile process with a certificate of
// the consumers' service (chaos.attackerInstance) tries, once, every
// attack of chaos.AttackRegisterHijack and the others against the live
// cluster, and reports what each peer answered. Its gRPC connections go
// through the fault proxies like every other node's.

// attackTargets are what the harness tells the attacker.
type attackTargets struct {
	brokers []string // gRPC addresses
	gossip  []string // gossip (memberlist) addresses
	owner   string   // the primary's replication address
	primary string   // the primary's instance
	service string   // the owner service
	table   string
}

// attackTimeout bounds each attack.
const attackTimeout = 10 * time.Second

// gossipUserMsg is memberlist's message type of a delegate's message
// (pingMsg = 0 ... userMsg = 8), and gossipVersion the first byte of the
// brokers' gossip payload (package broker): a packet of the two and a
// payload reaches the registry of an unencrypted broker.
const (
	gossipUserMsg = 8
	gossipVersion = 1
)

// attack runs the attacks and prints the report.
func (n *node) attack(t attackTargets) {
	var rep chaos.AttackReport
	add := func(r chaos.AttackResult) {
		n.log.Info("attack", "name", r.Name, "target", r.Target, "refused", r.Refused, "sent", r.Sent, "skipped", r.Skipped, "detail", r.Detail)
		rep.Attacks = append(rep.Attacks, r)
	}
	id := transport.Identity{}
	if n.sec.tls != nil {
		id = n.sec.tls.Identity()
	}
	brokerOpts := n.sec.clientOptions(transport.ExpectRole(transport.RoleBroker))
	ownerOpts := n.sec.clientOptions(transport.ExpectService(t.service))
	for _, b := range t.brokers {
		reg := transport.Register{Version: transport.ProtocolVersion, Service: t.service, Instance: t.primary,
			Addr: "127.0.0.66:6666", Owner: true, Tables: []transport.TableInfo{{Table: t.table, Head: 1 << 40}}}
		add(denied(chaos.AttackRegisterHijack, b, registerAs(b, brokerOpts, reg)))
		add(denied(chaos.AttackStatus, b, brokerCall(b, brokerOpts, func(ctx context.Context, c *transport.BrokerClient) error {
			_, err := c.Status(ctx, &transport.StatusRequest{Version: transport.ProtocolVersion})
			return err
		})))
		add(denied(chaos.AttackSetMode, b, brokerCall(b, brokerOpts, func(ctx context.Context, c *transport.BrokerClient) error {
			_, err := c.SetMode(ctx, &transport.SetModeRequest{Version: transport.ProtocolVersion, Service: t.service, Table: t.table, Mode: transport.ModePull})
			return err
		})))
	}
	add(denied(chaos.AttackSubscribeSpoof, t.owner, subscribeAs(t.owner, ownerOpts,
		&transport.Open{Service: t.service, Instance: id.Instance, Table: t.table}, nil)))
	add(denied(chaos.AttackStandbySubscribe, t.owner, subscribeAs(t.owner, ownerOpts,
		&transport.Open{Service: id.Service, Instance: id.Instance, Table: t.table, Standby: true}, nil)))
	add(ackAboveHead(t.owner, ownerOpts, &transport.Open{Service: id.Service, Instance: id.Instance, Table: t.table}))
	forged, oversized := forgedGossip(t.service), oversizedGossip()
	for _, g := range t.gossip {
		add(sendPacket(chaos.AttackForgedGossip, g, forged))
		add(sendPacket(chaos.AttackOversizedGossip, g, oversized))
	}
	n.emit(rep)
}

// denied is the result of an attack that a peer must refuse with
// PermissionDenied. A peer that could not be reached skips it.
func denied(name, target string, err error) chaos.AttackResult {
	r := chaos.AttackResult{Name: name, Target: target, Refused: errors.Is(err, transport.ErrPermission)}
	switch {
	case err == nil:
		r.Detail = "accepted"
	case errors.Is(err, transport.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded):
		r.Skipped, r.Detail = true, err.Error()
	default:
		r.Detail = err.Error()
	}
	return r
}

// registerAs opens a broker session with reg and returns the error of the
// broker's first answer (nil: it took the registration).
func registerAs(addr string, opts transport.Options, reg transport.Register) error {
	ctx, cancel := context.WithTimeout(context.Background(), attackTimeout)
	defer cancel()
	cc, err := transport.Dial(addr, opts)
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := transport.NewBrokerClient(cc).Session(ctx)
	if err != nil {
		return transport.FromStatus(err)
	}
	if err := stream.Send(&transport.SessionRequest{Kind: transport.SessionRegister, Register: &reg}); err != nil && !errors.Is(err, io.EOF) {
		return transport.FromStatus(err)
	}
	_, err = stream.Recv()
	return transport.FromStatus(err)
}

// brokerCall runs one unary broker call.
func brokerCall(addr string, opts transport.Options, call func(context.Context, *transport.BrokerClient) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), attackTimeout)
	defer cancel()
	cc, err := transport.Dial(addr, opts)
	if err != nil {
		return err
	}
	defer cc.Close()
	return transport.FromStatus(call(ctx, transport.NewBrokerClient(cc)))
}

// subscribeAs opens a Subscribe stream with open; then, if the owner took
// it, runs then on it. It returns the owner's refusal, or then's error.
func subscribeAs(addr string, opts transport.Options, open *transport.Open, then func(*transport.ClientSubscription) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), attackTimeout)
	defer cancel()
	cc, err := transport.Dial(addr, opts)
	if err != nil {
		return err
	}
	defer cc.Close()
	sub, _, err := transport.NewReplicationClient(cc).OpenSubscribe(ctx, open)
	if err != nil {
		return err
	}
	defer sub.Close()
	if then == nil {
		return nil
	}
	return then(sub)
}

// ackAboveHead subscribes as what the attacker is (a reader the policy
// allows) and acks 2^64-1: the owner must end the stream as a bad request.
func ackAboveHead(addr string, opts transport.Options, open *transport.Open) chaos.AttackResult {
	r := chaos.AttackResult{Name: chaos.AttackAckAboveHead, Target: addr}
	opened := false
	err := subscribeAs(addr, opts, open, func(sub *transport.ClientSubscription) error {
		opened = true
		if err := sub.Send(&transport.ConsumerFrame{Kind: transport.KindAck, Seq: math.MaxUint64}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		for {
			if _, err := sub.Recv(); err != nil {
				return err
			}
		}
	})
	switch {
	case !opened:
		r.Skipped, r.Detail = true, fmt.Sprintf("the stream did not open: %v", err)
	case errors.Is(err, transport.ErrBadRequest):
		r.Refused, r.Detail = true, err.Error()
	default:
		r.Detail = fmt.Sprintf("the stream went on after the ack: %v", err)
	}
	return r
}

// forgedGossip is the gossip payload of a fake primary of service at the
// last epoch there is (no grant could ever follow it).
func forgedGossip(service string) []byte {
	type ownerRec struct {
		Service string `msgpack:"svc"`
		Epoch   uint64 `msgpack:"ep"`
		Primary string `msgpack:"p"`
	}
	b, err := msgpack.Marshal(map[string]any{"o": []ownerRec{{Service: service, Epoch: math.MaxUint64, Primary: chaosAttacker}}})
	if err != nil {
		panic(err) // plain strings and numbers
	}
	return append([]byte{gossipUserMsg, gossipVersion}, b...)
}

// chaosAttacker names the attacker's fake primary in forged gossip.
const chaosAttacker = "mallory"

// oversizedGossip is 10 bytes whose payload claims 2^32-1 instance records
// (a broker that trusted the claim allocated until it died).
func oversizedGossip() []byte {
	return []byte{gossipUserMsg, gossipVersion, 0x81, 0xa1, 'i', 0xdd, 0xff, 0xff, 0xff, 0xff}
}

// sendPacket sends one UDP packet to addr: the harness judges it.
func sendPacket(name, addr string, pkt []byte) chaos.AttackResult {
	r := chaos.AttackResult{Name: name, Target: addr}
	c, err := net.Dial("udp", addr)
	if err != nil {
		r.Skipped, r.Detail = true, err.Error()
		return r
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		r.Skipped, r.Detail = true, err.Error()
		return r
	}
	r.Sent, r.Detail = true, fmt.Sprintf("%d bytes sent", len(pkt))
	return r
}
