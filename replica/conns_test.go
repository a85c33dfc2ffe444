package replica

import (
	"bytes"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// TestReplica_OwnerWindow: an owner sends a replica that is busy applying
// up to its stream's flow control window (streamWindow) before it waits,
// not gRPC's initial 64 KiB: a replica catching up on a fresh connection
// receives the next frames while it applies one.
func TestReplica_OwnerWindow(t *testing.T) {
	owner := openWith(t, "stores", "s1", "", "", func(c *Config) { c.Flow = FlowControl{Window: -1} })
	t.Cleanup(func() { mustClose(t, owner) })
	tbl, err := owner.Own("prices")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	if _, err := tbl.Put(ctx, []byte("first"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	cons := openWith(t, "checkout", "c1", "", "", nil)
	t.Cleanup(func() { mustClose(t, cons) })
	r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "prices", Addr: owner.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		t.Fatal(err)
	}
	// The replica's first batch of the writes below blocks its apply
	// until release.
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	r.OnChange(func(Event) { <-release })
	var sentBytes atomic.Int64
	owner.hooks.send = func(s *sender, f *transport.OwnerFrame, returned bool) {
		if !returned || f.Kind != transport.KindChanges {
			return
		}
		sentBytes.Add(int64(frameSize(t, f)))
	}
	val := bytes.Repeat([]byte("x"), 1<<10)
	const n = 4096 // 4 MiB of values
	ws := make([]Write, 0, 64)
	for i := 0; i < n; i += cap(ws) {
		ws = ws[:0]
		for j := range cap(ws) {
			ws = append(ws, Write{Key: []byte{byte((i + j) >> 8), byte(i + j)}, Value: val})
		}
		if _, err := tbl.Apply(ctx, ws...); err != nil {
			t.Fatal(err)
		}
	}
	// Sent while the replica applies nothing: the window's worth, less
	// what gRPC holds back of it.
	const want = streamWindow / 2
	waitUntil(t, 20*time.Second, "the owner sends half a window ahead of the blocked replica", func() bool { return sentBytes.Load() >= want })
	once.Do(func() { close(release) })
	if err := r.WaitFor(ctx, tbl.Head()); err != nil {
		t.Fatal(err)
	}
}

// A replica given the owner's address connects to it while Subscribe
// loads the replica, before its stream starts: the stream of a restarted
// replica then opens on a made connection.
func TestReplica_ConnectsWhileLoading(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			conns = append(conns, conn)
		}
	}()
	cons := openWith(t, "checkout", "c1", "", "", nil)
	t.Cleanup(func() { mustClose(t, cons) })
	// The hook runs under the component's lock: it waits, the test
	// goroutine fails after Subscribe returns.
	var early bool
	cons.hooks.subscribed = func(*Replica) {
		deadline := time.Now().Add(20 * time.Second)
		for !early && time.Now().Before(deadline) {
			early = accepted.Load() > 0
			runtime.Gosched()
		}
	}
	if _, err := cons.Subscribe(ctxT(t, 30*time.Second), SubscribeOptions{Service: "stores", Table: "prices", Addr: ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	if !early {
		t.Fatal("no connection to the owner before the stream started")
	}
}
