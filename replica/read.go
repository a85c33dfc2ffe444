package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// ReadPolicy says where a read is served from.
type ReadPolicy struct {
	kind   readKind
	maxAge time.Duration
}

type readKind uint8

const (
	readCached readKind = iota
	readLive
	readFresh
)

var (
	// Cached reads the local replica only; it never waits on the network.
	Cached = ReadPolicy{kind: readCached}
	// Live asks the owner (its Get RPC); it fails when the owner cannot be
	// reached.
	Live = ReadPolicy{kind: readLive}
)

// Fresh reads locally when the replica is at most d stale, else live; when
// the owner cannot be reached it returns the cached value together with a
// *StaleError (errors.Is(err, ErrStale)) carrying the staleness.
func Fresh(d time.Duration) ReadPolicy { return ReadPolicy{kind: readFresh, maxAge: d} }

func (p ReadPolicy) String() string {
	switch p.kind {
	case readLive:
		return "live"
	case readFresh:
		return fmt.Sprintf("fresh(%s)", p.maxAge)
	}
	return "cached"
}

// ErrStale is wrapped by StaleError.
var ErrStale = errors.New("replica: stale read")

// StaleError is returned with a cached value by a Fresh read whose live
// fallback failed: the value is Staleness old (at most), and Err says why
// the owner could not answer.
type StaleError struct {
	Table     string
	Seq       uint64        // the replica's seq the value was read at
	Staleness time.Duration // how long since the replica was known current (see Lag.Staleness)
	Err       error
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("replica %s: stale read at seq %d (stale for %s): owner unreachable: %v", e.Table, e.Seq, e.Staleness, e.Err)
}

// Unwrap returns ErrStale and the owner's error.
func (e *StaleError) Unwrap() []error { return []error{ErrStale, e.Err} }

// Read returns the value of key under policy p.
func (r *Replica) Read(ctx context.Context, key []byte, p ReadPolicy) (value []byte, found bool, err error) {
	switch p.kind {
	case readLive:
		return r.readLive(ctx, key)
	case readFresh:
		lag := r.Lag()
		r.mu.RLock()
		streaming := r.state == StateStreaming
		r.mu.RUnlock()
		if streaming && lag.Staleness <= p.maxAge {
			return r.Get(key)
		}
		v, ok, lerr := r.readLive(ctx, key)
		if lerr == nil {
			return v, ok, nil
		}
		v, ok, err := r.Get(key)
		if err != nil {
			return nil, false, err
		}
		return v, ok, &StaleError{Table: r.opts.Table, Seq: r.Seq(), Staleness: r.Lag().Staleness, Err: lerr}
	default:
		return r.Get(key)
	}
}

func (r *Replica) readLive(ctx context.Context, key []byte) ([]byte, bool, error) {
	addr, _, err := r.resolve()
	if err != nil {
		return nil, false, err
	}
	conn, err := r.c.conn(ownerPeer(addr, r.opts.Service))
	if err != nil {
		return nil, false, err
	}
	resp, err := transport.NewReplicationClient(conn).Get(ctx, &transport.GetRequest{
		Version: transport.ProtocolVersion, Table: r.opts.Table, Keys: [][]byte{key}, Service: r.c.cfg.Service,
	})
	if err != nil {
		return nil, false, fmt.Errorf("live read of %s from %s: %w", r.opts.Table, addr, err)
	}
	if len(resp.Values) != 1 {
		return nil, false, fmt.Errorf("%w: live read returned %d values for 1 key", transport.ErrBadRequest, len(resp.Values))
	}
	return resp.Values[0].Value, resp.Values[0].Found, nil
}

// ReadResult is the outcome of an asynchronous read.
type ReadResult struct {
	Value []byte
	Found bool
	Err   error
}

// ReadAsync performs Read in the background and delivers the result on the
// returned channel (buffered: the reader may walk away). A slow owner never
// blocks the caller's request path; ctx bounds the read.
func (r *Replica) ReadAsync(ctx context.Context, key []byte, p ReadPolicy) <-chan ReadResult {
	ch := make(chan ReadResult, 1)
	go func() {
		v, ok, err := r.Read(ctx, key, p)
		ch <- ReadResult{Value: v, Found: ok, Err: err}
	}()
	return ch
}
