package main

import (
	"slices"
	"sync"

	"github.com/replmesh/replmesh/chaos"
	"github.com/replmesh/replmesh/internal/faultproxy"
	"google.golang.org/grpc/resolver"
)

// Every gRPC connection of this process goes through a fault proxy of its
// own, one per destination address: transport.Dial dials
// "passthrough:///<addr>", and this process replaces gRPC's passthrough
// resolver with one that answers with the address of the proxy to <addr>
// (started on first use). The harness then breaks, slows or heals exactly
// the traffic between this process and one destination (OpLink), in both
// directions, without the replica or broker code knowing.

// links holds the proxies and their faults.
type links struct {
	mu      sync.Mutex
	proxies map[string]*faultproxy.Proxy // destination -> proxy
	faults  map[string]chaos.LinkFault   // destination -> its faults (also before the proxy exists)
	err     error                        // the first proxy that could not start
}

func newLinks(initial []chaos.LinkFault) *links {
	l := &links{proxies: map[string]*faultproxy.Proxy{}, faults: map[string]chaos.LinkFault{}}
	for _, f := range initial {
		l.faults[f.Addr] = f
	}
	return l
}

// proxyFor returns the address of the proxy to addr, starting it (with the
// faults already set for addr) on first use.
func (l *links) proxyFor(addr string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p, ok := l.proxies[addr]; ok {
		return p.Addr()
	}
	p, err := faultproxy.New(addr)
	if err != nil {
		if l.err == nil {
			l.err = err
		}
		return addr // unproxied: reported by status
	}
	l.proxies[addr] = p
	apply(p, l.faults[addr])
	return p.Addr()
}

func apply(p *faultproxy.Proxy, f chaos.LinkFault) {
	p.SetDelay(f.Delay)
	p.SetBandwidth(f.Rate)
	if f.Paused {
		p.Pause()
	} else {
		p.Resume()
	}
}

// set changes the faults of the link to f.Addr; f.Cut resets its open
// connections once.
func (l *links) set(f chaos.LinkFault) {
	l.mu.Lock()
	cut := f.Cut
	f.Cut = false
	l.faults[f.Addr] = f
	p := l.proxies[f.Addr]
	l.mu.Unlock()
	if p == nil {
		return
	}
	apply(p, f)
	if cut {
		p.CutAll()
	}
}

// status lists the links, sorted by destination.
func (l *links) status() []chaos.LinkStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []chaos.LinkStatus
	for addr, p := range l.proxies {
		up, down := p.Bytes()
		f := l.faults[addr]
		f.Addr = addr
		out = append(out, chaos.LinkStatus{LinkFault: f, Proxy: p.Addr(), Up: up, Down: down})
	}
	slices.SortFunc(out, func(a, b chaos.LinkStatus) int {
		switch {
		case a.Addr < b.Addr:
			return -1
		case a.Addr > b.Addr:
			return 1
		}
		return 0
	})
	return out
}

func (l *links) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.proxies {
		_ = p.Close()
	}
}

// resolverBuilder is the replacement of gRPC's passthrough resolver.
type resolverBuilder struct{ l *links }

func (b resolverBuilder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	addr := b.l.proxyFor(t.Endpoint())
	// As gRPC's passthrough resolver does, the error is not acted upon: the
	// connection reports it.
	_ = cc.UpdateState(resolver.State{Addresses: []resolver.Address{{Addr: addr}}})
	return nopResolver{}, nil
}

func (resolverBuilder) Scheme() string { return "passthrough" }

type nopResolver struct{}

func (nopResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (nopResolver) Close()                                {}
