package replica

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// An in-memory component (no DataDir) stores values up to its limit
// (badger keeps no value log in memory) and refuses larger ones with
// ErrTooLarge, writing nothing; a component on disk takes the protocol's
// maximum.
func TestInMemory_ValueLimit(t *testing.T) {
	tests := []struct {
		name    string
		dir     bool
		size    int
		wantErr error
	}{
		{"memory 1 KiB", false, 1 << 10, nil},
		{"memory 100 KiB", false, 100 << 10, nil},
		{"memory at the limit", false, memMaxValue, nil},
		{"memory above the limit", false, memMaxValue + 1, ErrTooLarge},
		{"disk above the memory limit", true, memMaxValue + 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig("s", "i")
			if tt.dir {
				cfg.DataDir = t.TempDir()
			}
			c, err := Open(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tb, err := c.Own("t")
			if err != nil {
				t.Fatal(err)
			}
			v := bytes.Repeat([]byte("x"), tt.size)
			_, err = tb.Put(context.Background(), []byte("k"), v)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Put of %d bytes: %v, want %v", tt.size, err, tt.wantErr)
			}
			got, ok, gerr := tb.Get([]byte("k"))
			if gerr != nil {
				t.Fatal(gerr)
			}
			if want := tt.wantErr == nil; ok != want || want && !bytes.Equal(got, v) {
				t.Fatalf("after the Put: found %v (%d bytes), want found %v", ok, len(got), want)
			}
		})
	}
}
