package replica

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/replmesh/replmesh/transport"
)

// TestCommitReusesLogBuffers: the committer encodes each commit's log
// groups into the buffers of the commit before (Component.logSpare), and
// the log written through them reads back intact, on disk (segment) and
// in memory, for commits of one change and of many, small and large
// values, puts and deletes, one after another.
func TestCommitReusesLogBuffers(t *testing.T) {
	for _, disk := range []bool{false, true} {
		t.Run(fmt.Sprintf("disk=%v", disk), func(t *testing.T) {
			dir := ""
			if disk {
				dir = t.TempDir()
			}
			c := openComponent(t, "svc", "o1", dir, "")
			defer mustClose(t, c)
			tbl, err := c.Own("t")
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxT(t, time.Minute)
			var want []transport.Change
			for step := range 40 {
				n := 1 + (step*37)%300
				ws := make([]Write, n)
				for i := range ws {
					key := fmt.Appendf(nil, "k%d-%d", step, i%50)
					if (step+i)%7 == 3 {
						ws[i] = Write{Key: key, Delete: true}
						want = append(want, transport.Change{Op: transport.OpDelete, Key: key})
						continue
					}
					v := bytes.Repeat([]byte{byte(step), byte(i)}, 1+(step*i)%900)
					ws[i] = Write{Key: key, Value: v}
					want = append(want, transport.Change{Op: transport.OpPut, Key: key, Value: v})
				}
				if step%2 == 0 {
					// Writes of one change each, queued together.
					var ps []*Pending
					for _, w := range ws {
						p, err := tbl.Submit(ctx, w)
						if err != nil {
							t.Fatal(err)
						}
						ps = append(ps, p)
					}
					for _, p := range ps {
						if _, err := p.Wait(ctx); err != nil {
							t.Fatal(err)
						}
					}
				} else if _, err := tbl.Apply(ctx, ws...); err != nil {
					t.Fatal(err)
				}
				if cap(c.logSpare.b.data) == 0 {
					t.Fatalf("step %d: the committer kept no log buffers", step)
				}
			}
			got, err := tbl.readLog(1, len(want)+1, 1<<30, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("log holds %d changes, want %d", len(got), len(want))
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.Seq != uint64(i+1) || g.Op != w.Op || !bytes.Equal(g.Key, w.Key) || !bytes.Equal(g.Value, w.Value) {
					t.Fatalf("change %d: seq %d op %v key %q (%d value bytes), want seq %d op %v key %q (%d value bytes)",
						i, g.Seq, g.Op, g.Key, len(g.Value), i+1, w.Op, w.Key, len(w.Value))
				}
			}
		})
	}
}

// TestSubmitCopiesKeyAndValue: a write's key and value are the owner's
// own copies (the caller may reuse its buffers at once), and appending to
// the key a change holds never overwrites its value.
func TestSubmitCopiesKeyAndValue(t *testing.T) {
	c := openComponent(t, "svc", "o1", "", "")
	defer mustClose(t, c)
	tbl, err := c.Own("t")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, time.Minute)
	key, val := []byte("key"), []byte("value")
	p, err := tbl.Submit(ctx, Write{Key: key, Value: val})
	if err != nil {
		t.Fatal(err)
	}
	copy(key, "XXX")
	copy(val, "YYYYY")
	if _, err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	chs, err := tbl.readChanges(1, 1, 1<<20, nil)
	if err != nil || len(chs) != 1 {
		t.Fatalf("read: %d changes, %v", len(chs), err)
	}
	if string(chs[0].Key) != "key" || string(chs[0].Value) != "value" {
		t.Fatalf("change holds %q=%q, want key=value", chs[0].Key, chs[0].Value)
	}
	// The change the tail holds: its key's capacity ends at the key.
	held, ok := tbl.tail.read(1, 1, 1<<20, nil)
	if !ok || len(held) != 1 {
		t.Fatalf("tail read: %d changes, %v", len(held), ok)
	}
	_ = append(held[0].Key, "ZZZZZ"...)
	if string(held[0].Value) != "value" {
		t.Fatalf("appending to the key changed the value to %q", held[0].Value)
	}
}
