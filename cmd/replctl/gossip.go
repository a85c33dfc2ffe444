package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/replmesh/replmesh/transport"
)

// gossipKeysResult is one broker's answer to replctl gossip keys -o json:
// its keys by fingerprint after the operation, the primary first, or the
// error that broker returned.
type gossipKeysResult struct {
	Broker string                    `json:"broker"` // the address replctl reached
	Name   string                    `json:"name,omitempty"`
	Keys   []transport.GossipKeyInfo `json:"keys"`
	Error  string                    `json:"error,omitempty"`
}

// gossip runs "gossip keys [list | add KEY | use KEY | remove KEY]" on
// every broker of -broker in turn (keys are per broker: a rotation is a
// round of add, then of use, then of remove over all of them). KEY is the
// base64 of a 16, 24 or 32-byte key. The broker's token comes from -token
// or -token-file.
func (c *cli) gossip(ctx context.Context, args []string) error {
	const usage = "keys [list | add KEY | use KEY | remove KEY]"
	fs := c.cmdFlags("gossip", usage)
	token := fs.String("token", "", "the broker's `token` (its -token), which the key calls require")
	tokenFile := fs.String("token-file", "", "`file` holding the broker's token")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 || pos[0] != "keys" {
		return usagef("gossip: want 'gossip %s'", usage)
	}
	op, keyArg := transport.GossipKeysList, ""
	switch rest := pos[1:]; {
	case len(rest) == 0 || len(rest) == 1 && rest[0] == transport.GossipKeysList:
	case len(rest) == 2 && (rest[0] == transport.GossipKeysAdd || rest[0] == transport.GossipKeysUse || rest[0] == transport.GossipKeysRemove):
		op, keyArg = rest[0], rest[1]
	default:
		return usagef("gossip keys: want list, add KEY, use KEY or remove KEY, got %q", strings.Join(rest, " "))
	}
	req := &transport.GossipKeysRequest{Version: transport.ProtocolVersion, Op: op, Token: *token}
	if keyArg != "" {
		if req.Key, err = base64.StdEncoding.DecodeString(keyArg); err != nil {
			return usagef("gossip keys %s: KEY is not base64: %v", op, err)
		}
	}
	if *tokenFile != "" {
		if *token != "" {
			return usagef("gossip keys: give -token or -token-file, not both")
		}
		b, err := os.ReadFile(*tokenFile)
		if err != nil {
			return usagef("-token-file: %v", err)
		}
		req.Token = strings.TrimSpace(string(b))
	}
	addrs := c.brokers()
	if len(addrs) == 0 {
		return usagef("-broker is empty")
	}
	var results []gossipKeysResult
	failed := 0
	for _, addr := range addrs {
		r := gossipKeysResult{Broker: addr}
		res, err := c.gossipKeysAt(ctx, addr, req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r.Error = err.Error()
			failed++
		} else {
			r.Name, r.Keys = res.Broker, res.Keys
		}
		results = append(results, r)
	}
	if c.output == "json" {
		if err := writeJSON(c.stdout, results); err != nil {
			return err
		}
	} else if err := c.printGossipKeys(results); err != nil {
		return err
	}
	if failed > 0 {
		return &exitErr{code: exitError, err: fmt.Errorf("gossip keys %s failed on %d of %d brokers", op, failed, len(addrs))}
	}
	return nil
}

// gossipKeysAt sends req to the broker at addr.
func (c *cli) gossipKeysAt(ctx context.Context, addr string, req *transport.GossipKeysRequest) (*transport.GossipKeysResponse, error) {
	cn, err := c.dial(addr)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := cn.broker.GossipKeys(cctx, req)
	switch {
	case errors.Is(err, transport.ErrUnimplemented):
		return nil, errors.New("the broker does not manage gossip keys (an older build)")
	case errors.Is(err, transport.ErrUnavailable):
		return nil, fmt.Errorf("cannot reach broker: %s%s", shortError(err), brokerHint(shortError(err)))
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("the broker did not answer within %s", c.timeout)
	}
	return res, err
}

func (c *cli) printGossipKeys(results []gossipKeysResult) error {
	tw := newTable(c.stdout, "BROKER", "NAME", "KEY", "PRIMARY")
	for _, r := range results {
		if r.Error != "" {
			tw.row(r.Broker, r.Name, "error: "+r.Error, "")
			continue
		}
		for _, k := range r.Keys {
			primary := ""
			if k.Primary {
				primary = "yes"
			}
			tw.row(r.Broker, r.Name, k.Fingerprint, primary)
		}
	}
	return tw.flush()
}
