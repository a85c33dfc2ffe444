package main

import (
	"context"
	"io"
	"os"
	"strings"
	"testing"
)

// The replmesh reader processes run a binary of replmesh alone, built from
// the package's source in the working directory; without the source there
// they re-execute the harness binary, and the note says so.
func TestSmallReader(t *testing.T) {
	newBench := func() *bench {
		return &bench{systems: []string{"replmesh"}, workloads: []string{"w2"}, dir: t.TempDir(), stderr: io.Discard}
	}
	t.Run("built from the source", func(t *testing.T) {
		if testing.Short() {
			t.Skip("builds the package")
		}
		exe, note := newBench().smallReader(context.Background())
		if exe == "" || !strings.Contains(note, "replmesh alone") {
			t.Fatalf("smallReader = %q, %q; want a binary of replmesh alone", exe, note)
		}
		if _, err := os.Stat(exe); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no source: the harness binary", func(t *testing.T) {
		t.Chdir(t.TempDir())
		exe, note := newBench().smallReader(context.Background())
		if exe != "" || !strings.Contains(note, "harness binary") {
			t.Fatalf("smallReader = %q, %q; want the harness binary", exe, note)
		}
	})
	t.Run("no replmesh reader process: nothing built", func(t *testing.T) {
		b := newBench()
		b.workloads = []string{"w1"}
		if exe, note := b.smallReader(context.Background()); exe != "" || note != "" {
			t.Fatalf("smallReader = %q, %q for W1 alone", exe, note)
		}
	})
}
