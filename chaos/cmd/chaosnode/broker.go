package main

import (
	"context"

	"github.com/replmesh/replmesh/broker"
	"github.com/replmesh/replmesh/transport"
)

// startBroker starts a broker with fast timings (broker.LocalConfig) on
// fixed addresses, so that a restarted broker is found where it was, and
// with its raft data in dir, so that a killed broker comes back as the
// member it was (an in-memory one would come back as a new member, which
// needs a majority of the others up).
func (n *node) startBroker(ctx context.Context, listen, gossip string, join []string, dir string) error {
	cfg := broker.LocalConfig(n.name)
	cfg.GRPCAddr, cfg.BindAddr, cfg.Join = listen, gossip, join
	cfg.DataDir = dir
	cfg.Logger = n.log
	if n.sec.tls != nil {
		cfg.Transport.TLS = n.sec.tls.ServerConfig()
		// Raft messages and joins to the other brokers, which present
		// broker identities.
		cfg.PeerTransport.TLS = n.sec.tls.ClientConfig(transport.ExpectRole(transport.RoleBroker))
		cfg.RequireIdentity = true
	}
	cfg.Policy, cfg.GossipKey, cfg.InsecureGossip, cfg.Insecure = n.sec.policy, n.sec.gossipKey, n.sec.insecure, n.sec.insecure
	b, err := broker.New(ctx, cfg)
	if err != nil {
		return err
	}
	n.brk, n.addr = b, b.GRPCAddr()
	return nil
}

func brokerStatusRequest() *transport.StatusRequest {
	return &transport.StatusRequest{Version: transport.ProtocolVersion}
}
