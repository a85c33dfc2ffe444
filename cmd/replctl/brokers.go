package main

import (
	"context"
	"fmt"

	"github.com/replmesh/replmesh/transport"
)

// brokerCmd runs "broker remove NAME": the broker named NAME leaves the
// brokers' Raft group for good (a configuration change through the raft
// leader), so it no longer counts toward the majority. Any broker of the
// cluster takes the request; with identities on it needs an admin.
func (c *cli) brokerCmd(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "remove" {
		return usagef("broker: want 'broker remove NAME'")
	}
	fs := c.cmdFlags("broker remove", "NAME")
	pos, err := c.parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("broker remove takes one broker NAME, got %q", pos)
	}
	name := pos[0]
	if len(c.brokers()) == 0 {
		return usagef("-broker is empty")
	}
	var resp *transport.RaftRemoveResponse
	var last error
	for _, addr := range c.brokers() {
		cc, err := transport.Dial(addr, c.topts)
		if err != nil {
			last = err
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, c.timeout)
		resp, err = transport.NewRaftClient(cc).Remove(cctx, &transport.RaftRemoveRequest{Version: transport.ProtocolVersion, Name: name})
		cancel()
		cc.Close()
		if err == nil {
			break
		}
		last = fmt.Errorf("%s: %w", addr, err)
	}
	if resp == nil {
		return fmt.Errorf("broker remove %s: %w", name, last)
	}
	if c.output == "json" {
		return writeJSON(c.stdout, resp)
	}
	textf(c.stdout, "removed broker %s (raft id %x); voters now:\n", name, resp.ID)
	t := newTable(c.stdout, "NAME", "RAFT ID", "ADDR")
	for _, m := range resp.Members {
		t.row(m.Name, fmt.Sprintf("%x", m.ID), m.Addr)
	}
	t.flush()
	return nil
}
