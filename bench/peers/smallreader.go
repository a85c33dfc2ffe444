package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
)

// smallReader builds the binary replmesh reader processes run (W2, W3):
// this package with the rmreader tag, which links replmesh alone. The
// harness binary links the NATS server and the Redis client besides, and
// a reader process re-executing it paged in more of it: the W2 reader's
// peak RSS was 4-6 MB higher (3 runs each, alternated), which is not a
// replmesh service's footprint. It builds from the working directory when
// that is this package's source (as when run with go run, or built and
// run from bench/peers) and the go command is there; otherwise the reader
// processes re-execute this binary. The note says which, for the figures.
func (b *bench) smallReader(ctx context.Context) (exe, note string) {
	const same = "reader process: the harness binary re-executed (it links the NATS server and the Redis client: a few MB more RSS than replmesh alone)"
	if !b.has("replmesh") || !b.does("w2") && !b.does("w3") {
		return "", ""
	}
	mod, err := os.ReadFile("go.mod")
	if err != nil || !bytes.HasPrefix(mod, []byte("module github.com/replmesh/replmesh/bench/peers\n")) {
		return "", same
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		return "", same
	}
	exe = filepath.Join(b.dir, "rmreader")
	cmd := exec.CommandContext(ctx, goCmd, "build", "-tags", "rmreader", "-o", exe, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.progress("building the replmesh reader binary failed, reader processes re-execute this one: %v\n%s", err, out)
		return "", same
	}
	return exe, "reader process: a binary of replmesh alone (this package built with -tags rmreader)"
}
