package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"

	"github.com/replmesh/replmesh/modes"
	"github.com/replmesh/replmesh/transport"
)

// security is what the -tls-*, -policy, -gossip-key and -insecure flags
// give a node (see chaos.envTLS): nil fields leave the node in plaintext.
type security struct {
	tls       *transport.TLSSource
	policy    *modes.AccessPolicy
	gossipKey []byte
	insecure  bool
}

// loadSecurity reads the files the flags name.
func loadSecurity(ca, cert, key, policy, gossipKey string, insecure bool, log *slog.Logger) (*security, error) {
	s := &security{insecure: insecure}
	switch {
	case ca == "" && cert == "" && key == "":
	case ca == "" || cert == "" || key == "":
		return nil, errors.New("-tls-ca, -tls-cert and -tls-key go together")
	default:
		src, err := transport.NewTLSSource(transport.TLSFiles{CA: ca, Cert: cert, Key: key}, log)
		if err != nil {
			return nil, err
		}
		s.tls = src
	}
	if policy != "" {
		p, err := modes.LoadAccessPolicy(policy)
		if err != nil {
			return nil, err
		}
		s.policy = p
	}
	if gossipKey != "" {
		k, err := base64.StdEncoding.DecodeString(gossipKey)
		if err != nil {
			return nil, fmt.Errorf("-gossip-key: %w", err)
		}
		s.gossipKey = k
	}
	return s, nil
}

// clientOptions are the transport options of a client with this node's
// certificate that expects a peer passing check (plaintext without TLS).
func (s *security) clientOptions(check transport.IdentityCheck) transport.Options {
	if s.tls == nil {
		return transport.Options{}
	}
	return transport.Options{TLS: s.tls.ClientConfig(check)}
}
