package main

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// fakeBroker is a broker whose registry is a StatusResponse the test
// writes: Status answers it, Lookup answers its Owners, SetMode records
// the override.
type fakeBroker struct {
	mu sync.Mutex
	st transport.StatusResponse
}

func (f *fakeBroker) Session(transport.SessionServer) error {
	return fmt.Errorf("%w: fake broker", transport.ErrUnavailable)
}

func (f *fakeBroker) Lookup(_ context.Context, in *transport.LookupRequest) (*transport.LookupResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range f.st.Owners {
		if o.Service == in.Service {
			return &transport.LookupResponse{Owner: o}, nil
		}
	}
	return nil, fmt.Errorf("%w: no service %q", transport.ErrUnknownTable, in.Service)
}

func (f *fakeBroker) Status(context.Context, *transport.StatusRequest) (*transport.StatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.st
	return &st, nil
}

func (f *fakeBroker) SetMode(_ context.Context, in *transport.SetModeRequest) (*transport.SetModeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Overrides == nil {
		f.st.Overrides = map[string]string{}
	}
	f.st.Overrides[in.Service+"/"+in.Table] = in.Mode
	return &transport.SetModeResponse{Revision: 1}, nil
}

// funcOwner is an owner instance whose calls run the test's functions
// (a nil one answers ErrUnknownTable).
type funcOwner struct {
	GetFunc       func(*transport.GetRequest) (*transport.GetResponse, error)
	DigestFunc    func(*transport.DigestRequest) (*transport.DigestResponse, error)
	KeysFunc      func(*transport.KeysRequest) (*transport.KeysResponse, error)
	SubscribeFunc func(transport.SubscribeServer) error
}

func (f *funcOwner) Subscribe(s transport.SubscribeServer) error {
	if f.SubscribeFunc == nil {
		return transport.ErrUnknownTable
	}
	return f.SubscribeFunc(s)
}

func (f *funcOwner) Get(_ context.Context, in *transport.GetRequest) (*transport.GetResponse, error) {
	if f.GetFunc == nil {
		return nil, transport.ErrUnknownTable
	}
	return f.GetFunc(in)
}

func (f *funcOwner) Digest(_ context.Context, in *transport.DigestRequest) (*transport.DigestResponse, error) {
	if f.DigestFunc == nil {
		return nil, transport.ErrUnknownTable
	}
	return f.DigestFunc(in)
}

func (f *funcOwner) Keys(_ context.Context, in *transport.KeysRequest) (*transport.KeysResponse, error) {
	if f.KeysFunc == nil {
		return nil, transport.ErrUnknownTable
	}
	return f.KeysFunc(in)
}

// serve serves what register registers on a free port until
// the test ends, and returns its address.
func serve(t *testing.T, register func(*transport.Server)) string {
	t.Helper()
	srv := transport.NewServer(transport.Options{})
	register(srv)
	lis, err := transport.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	return lis.Addr().String()
}

func serveBroker(t *testing.T, st transport.StatusResponse) string {
	t.Helper()
	return serve(t, func(s *transport.Server) { transport.RegisterBrokerServer(s, &fakeBroker{st: st}) })
}

func serveOwner(t *testing.T, f *funcOwner) string {
	t.Helper()
	return serve(t, func(s *transport.Server) { transport.RegisterReplicationServer(s, f) })
}

// runCtl runs replctl in this process (no binary to build: fast) with
// args and returns its output and exit code.
func runCtl(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, &stdout, &stderr, func(string) string { return "" })
	t.Logf("replctl %q -> %d", args, code)
	return result{stdout: stdout.String(), stderr: stderr.String(), code: code}
}

// tableOwner is a funcOwner serving one table of sorted rows at seq 7 of
// log L1: Get, Keys (pages of at most pageSize keys), Digest, and a
// Subscribe that resumes and sends the changes given, then holds the
// stream.
func tableOwner(rows []transport.Row, pageSize int, changes []transport.Change) *funcOwner {
	const seq, logID = 7, "L1"
	return &funcOwner{
		GetFunc: func(in *transport.GetRequest) (*transport.GetResponse, error) {
			out := &transport.GetResponse{Seq: seq, LogID: logID, Values: make([]transport.Value, len(in.Keys))}
			for i, k := range in.Keys {
				for _, r := range rows {
					if bytes.Equal(r.Key, k) {
						out.Values[i] = transport.Value{Found: true, Value: r.Value}
					}
				}
			}
			return out, nil
		},
		KeysFunc: func(in *transport.KeysRequest) (*transport.KeysResponse, error) {
			limit, err := in.Validate()
			if err != nil {
				return nil, err
			}
			limit = min(limit, pageSize)
			out := &transport.KeysResponse{Seq: seq, LogID: logID, Keys: [][]byte{}}
			for _, r := range rows {
				if !bytes.HasPrefix(r.Key, in.Prefix) || bytes.Compare(r.Key, in.After) <= 0 {
					continue
				}
				if len(out.Keys) == limit {
					out.More = true
					break
				}
				out.Keys = append(out.Keys, r.Key)
			}
			return out, nil
		},
		DigestFunc: func(*transport.DigestRequest) (*transport.DigestResponse, error) {
			return &transport.DigestResponse{LogID: logID, Seq: seq, Rows: uint64(len(rows)), Hash: []byte{1, 2, 3}}, nil
		},
		SubscribeFunc: func(s transport.SubscribeServer) error {
			if _, err := s.Recv(); err != nil {
				return err
			}
			if err := s.Send(&transport.OwnerFrame{Kind: transport.KindStart, HeadSeq: seq, Start: &transport.Start{
				Version: transport.ProtocolVersion, LogID: logID, Epoch: 1, HeadSeq: seq, FirstSeq: 1, Resume: true}}); err != nil {
				return err
			}
			if err := s.Send(&transport.OwnerFrame{Kind: transport.KindChanges, HeadSeq: seq, Epoch: 1, Changes: changes}); err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); err != nil {
					return nil
				}
			}
		},
	}
}
