package transport

import (
	"crypto/tls"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// Size limits and keepalive timings shared by both ends of every link. The
// server's enforcement policy is derived from the client's ping interval so
// the two can never disagree.
const (
	// DefaultMaxMessageSize bounds one gRPC message in either direction.
	DefaultMaxMessageSize = 8 << 20
	// MaxKeySize bounds one key.
	MaxKeySize = 64 << 10
	// MaxValueSize bounds one value; a change (key+value+header) always fits
	// in one message with room to spare.
	MaxValueSize = 2 << 20

	// KeepaliveTime is how often an idle client pings.
	KeepaliveTime = 10 * time.Second
	// KeepaliveTimeout is how long a ping may go unanswered before the link
	// is declared dead.
	KeepaliveTimeout = 5 * time.Second
)

// Options configure Dial and NewServer. The zero value is plaintext with the
// default limits.
type Options struct {
	// MaxMessageSize overrides DefaultMaxMessageSize when > 0.
	MaxMessageSize int
	// TLS enables TLS (mTLS when it carries client certificates / ClientCAs).
	TLS *tls.Config
	// MaxConcurrentStreams, when > 0, bounds the streams (calls in
	// flight) one client connection may have open on a server made with
	// NewServer; a client past it waits for a stream to end (gRPC's
	// SETTINGS_MAX_CONCURRENT_STREAMS). 0: gRPC's default, unbounded.
	// Dial ignores it.
	MaxConcurrentStreams uint32
	// DialOptions are appended to every Dial made with these options, after
	// its own and before the caller's extra ones: interceptors (use
	// grpc.WithChainStreamInterceptor / WithChainUnaryInterceptor so they
	// compose), stats handlers. NewServer ignores them.
	DialOptions []grpc.DialOption
}

func (o Options) maxMsg() int {
	if o.MaxMessageSize > 0 {
		return o.MaxMessageSize
	}
	return DefaultMaxMessageSize
}

// ChunkBudget is the number of payload bytes a sender puts in one batch or
// snapshot chunk: half of the message limit, leaving room for framing.
func (o Options) ChunkBudget() int { return o.maxMsg() / 2 }

// Server is a gRPC server with the standard health service registered.
type Server struct {
	*grpc.Server
	Health *health.Server
}

// NewServer returns a gRPC server with the msgpack codec, size limits,
// keepalive matched to Dial's, and the gRPC health service.
func NewServer(o Options, extra ...grpc.ServerOption) *Server {
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(o.maxMsg()),
		grpc.MaxSendMsgSize(o.maxMsg()),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             KeepaliveTime / 2,
			PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:    KeepaliveTime,
			Timeout: KeepaliveTimeout,
		}),
	}
	if o.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(o.TLS)))
	}
	if o.MaxConcurrentStreams > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(o.MaxConcurrentStreams))
	}
	s := grpc.NewServer(append(opts, extra...)...)
	h := health.NewServer()
	healthpb.RegisterHealthServer(s, h)
	return &Server{Server: s, Health: h}
}

// GracefulStop stops the server, waiting at most d for streams to finish
// before closing them.
func (s *Server) GracefulStop(d time.Duration) {
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.Server.GracefulStop(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.Server.Stop()
		<-done
	}
}

// Listen opens a TCP listener; "127.0.0.1:0" picks a free port.
func Listen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }

// Dial returns a client connection to addr with the msgpack codec forced,
// size limits and keepalive matched to NewServer, then o.DialOptions and
// extra. It does not block: the connection is made on first use and re-made
// after failures.
func Dial(addr string, o Options, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if o.TLS != nil {
		creds = credentials.NewTLS(o.TLS)
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(Codec{}),
			grpc.MaxCallRecvMsgSize(o.maxMsg()),
			grpc.MaxCallSendMsgSize(o.maxMsg()),
		),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
	}
	opts = append(opts, o.DialOptions...)
	return grpc.NewClient("passthrough:///"+addr, append(opts, extra...)...)
}
