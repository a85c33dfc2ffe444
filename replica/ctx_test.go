package replica

import (
	"context"
	"errors"
	"testing"
)

// TestContext_OpenAndSubscribeHonourIt: Open and Subscribe refuse a context
// that is already done, leaving nothing behind (no component, no replica:
// a later Subscribe of the same table works); the context bounds only the
// call, not the component's or the replica's life.
func TestContext_OpenAndSubscribeHonourIt(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	t.Run("Open", func(t *testing.T) {
		cfg := LocalConfig("svc", "i1")
		cfg.Logger = testLogger(t)
		c, err := Open(done, cfg)
		if !errors.Is(err, context.Canceled) {
			if c != nil {
				_ = c.Close()
			}
			t.Fatalf("Open with a done context: err = %v, want context.Canceled", err)
		}
	})
	t.Run("Subscribe", func(t *testing.T) {
		c := openComponent(t, "consumer", "i1", "", "")
		defer mustClose(t, c)
		opts := SubscribeOptions{Service: "svc", Table: "t", Addr: "127.0.0.1:1"}
		if _, err := c.Subscribe(done, opts); !errors.Is(err, context.Canceled) {
			t.Fatalf("Subscribe with a done context: err = %v, want context.Canceled", err)
		}
		live, stop := context.WithCancel(context.Background())
		r, err := c.Subscribe(live, opts)
		if err != nil {
			t.Fatalf("Subscribe after a refused one: %v", err)
		}
		stop() // the replica outlives the call's context (a cancel reaches derived contexts at once)
		if err := r.ctx.Err(); err != nil {
			t.Fatalf("the replica's context ended with Subscribe's: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
