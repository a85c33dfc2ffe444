package replica

import (
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// closeSpy records that its listener was closed.
type closeSpy struct {
	net.Listener
	closed atomic.Bool
}

func (l *closeSpy) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

// Config.Listener: the component serves on the listener it is given instead
// of ListenAddr (here one it could not listen on), Addr reports the
// listener's address, a consumer reaches it there, and Close closes it.
func TestComponent_Listener(t *testing.T) {
	tests := []struct {
		name string
		// listen returns the listener to serve on and how the consumer's
		// config reaches it.
		listen func(t *testing.T) (net.Listener, func(*Config))
	}{
		{"tcp", func(t *testing.T) (net.Listener, func(*Config)) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			return ln, nil
		}},
		{"memnet", func(t *testing.T) (net.Listener, func(*Config)) {
			var mem memNet
			var owner Config
			mem.join(&owner)
			return owner.Listener, mem.join
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inner, join := tc.listen(t)
			ln := &closeSpy{Listener: inner}
			owner := openWith(t, "stores", "s1", "", "", func(c *Config) {
				c.ListenAddr = "127.0.0.1:not-a-port" // not listened on
				c.Listener = ln
			})
			closed := false
			t.Cleanup(func() {
				if !closed {
					mustClose(t, owner)
				}
			})
			if got, want := owner.Addr(), ln.Addr().String(); got != want {
				t.Fatalf("Addr() = %q, want the listener's %q", got, want)
			}
			tbl, err := owner.Own("t")
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxT(t, 30*time.Second)
			if _, err := tbl.Put(ctx, []byte("k"), []byte("v")); err != nil {
				t.Fatal(err)
			}
			cons := openWith(t, "products", "p1", "", "", join)
			defer mustClose(t, cons)
			r, err := cons.Subscribe(ctx, SubscribeOptions{Service: "stores", Table: "t", Addr: owner.Addr()})
			if err != nil {
				t.Fatal(err)
			}
			mustConverge(t, tbl, r)

			closed = true
			mustClose(t, owner)
			if !ln.closed.Load() {
				t.Fatal("the listener is still open after Close")
			}
		})
	}
}
