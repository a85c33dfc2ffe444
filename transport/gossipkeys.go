package transport

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Operations of a GossipKeysRequest.
const (
	GossipKeysList   = "list"   // the keys in force
	GossipKeysAdd    = "add"    // install Key for decryption
	GossipKeysUse    = "use"    // make the installed Key the one gossip is encrypted with
	GossipKeysRemove = "remove" // uninstall Key (never the primary)
)

// GossipKeysRequest lists or changes one broker's gossip encryption keys
// (the keyring of its memberlist). A rotation is three rounds over every
// broker: add the new key, use it, remove the old one.
type GossipKeysRequest struct {
	Version uint32 `msgpack:"v"`
	// Token is the broker's shared token (as in Register); a broker
	// without a token refuses the call.
	Token string `msgpack:"tok,omitempty"`
	Op    string `msgpack:"op"`            // GossipKeysList, Add, Use or Remove
	Key   []byte `msgpack:"key,omitempty"` // the key (16, 24 or 32 bytes), except for list
}

// GossipKeyInfo names one installed key by its fingerprint (the first 8
// bytes of its SHA-256, in hex); keys themselves never leave the broker.
type GossipKeyInfo struct {
	Fingerprint string `msgpack:"fp" json:"fingerprint"`
	Primary     bool   `msgpack:"p,omitempty" json:"primary"` // gossip is encrypted with it
}

// GossipKeysResponse lists the broker's keys after the operation, the
// primary first.
type GossipKeysResponse struct {
	Broker string          `msgpack:"b" json:"broker"`
	Keys   []GossipKeyInfo `msgpack:"keys" json:"keys"`
}

// GossipKeysServer is implemented by a BrokerServer that manages gossip
// keys. It is a separate interface so that brokers written before it still
// register; a broker without it answers ErrUnimplemented.
type GossipKeysServer interface {
	GossipKeys(context.Context, *GossipKeysRequest) (*GossipKeysResponse, error)
}

func gossipKeysHandler(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
	in := new(GossipKeysRequest)
	if err := decodeRequest(dec, in); err != nil {
		return nil, StatusError(err)
	}
	gs, ok := srv.(GossipKeysServer)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "this broker does not manage gossip keys")
	}
	out, err := gs.GossipKeys(ctx, in)
	return out, StatusError(err)
}

// GossipKeys lists or changes the broker's gossip keys. A broker of an
// older build answers ErrUnimplemented.
func (c *BrokerClient) GossipKeys(ctx context.Context, in *GossipKeysRequest, opts ...grpc.CallOption) (*GossipKeysResponse, error) {
	out := new(GossipKeysResponse)
	if err := c.cc.Invoke(ctx, "/"+BrokerServiceName+"/GossipKeys", in, out, opts...); err != nil {
		if status.Code(err) == codes.Unimplemented {
			return nil, fmt.Errorf("%w: %s", ErrUnimplemented, status.Convert(err).Message())
		}
		return nil, FromStatus(err)
	}
	return out, nil
}
