package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestComponent_ReadsRacingClose: reads that are in flight while the
// component closes finish on an open database (badger's Close unmaps the
// table files under any open iterator: without the read gate this crashed
// the process with SIGSEGV, as the chaos suite found), and reads after
// Close return ErrClosed.
func TestComponent_ReadsRacingClose(t *testing.T) {
	if testing.Short() {
		t.Skip("writes tens of MB; skipped in -short mode")
	}
	for round := range 3 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			cfg := LocalConfig("stores", "s1")
			cfg.DataDir = t.TempDir()
			cfg.ListenAddr = ""
			cfg.MemTableSize = 1 << 20 // flush to table files early
			cfg.MaxGroupBytes, cfg.MaxApplyBytes = 48<<10, 48<<10
			cfg.Logger = testLogger(t)
			c, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			tbl, err := c.Own("items")
			if err != nil {
				t.Fatal(err)
			}
			// About 6 MB of rows: several table files.
			val := bytes.Repeat([]byte("v"), 512)
			for i := 0; i < 12000; i += 64 {
				ws := make([]Write, 64)
				for j := range ws {
					ws[j] = Write{Key: fmt.Appendf(nil, "k%06d", i+j), Value: val}
				}
				if _, err := tbl.Apply(ctxT(t, 30*time.Second), ws...); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			started := make(chan struct{}, 4)
			var mu sync.Mutex
			var bad []error
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; ; n++ {
						var err error
						if g%2 == 0 {
							_, err = tbl.Scan(nil, func(_, v []byte) bool { return len(v) > 0 })
						} else {
							_, err = tbl.Digest(nil, nil)
						}
						if n == 0 {
							started <- struct{}{}
						}
						if errors.Is(err, ErrClosed) {
							return
						}
						if err != nil {
							mu.Lock()
							bad = append(bad, err)
							mu.Unlock()
							return
						}
					}
				}()
			}
			for range 4 {
				<-started
			}
			if err := c.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			wg.Wait()
			if len(bad) > 0 {
				t.Fatalf("reads racing Close failed: %v", bad)
			}
			if _, _, err := tbl.Get([]byte("k000001")); !errors.Is(err, ErrClosed) {
				t.Fatalf("Get after Close: %v, want ErrClosed", err)
			}
		})
	}
}
