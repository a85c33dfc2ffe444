//go:build rmreader

package main

import (
	"context"
	"errors"
)

// Built with the rmreader tag, this binary is a replmesh reader process
// (smallReader) and nothing else: the peers' code, and the NATS server and
// Redis client it links, are left out.

var errReaderOnly = errors.New("built with -tags rmreader: a replmesh reader process only")

func natsReaderMain(context.Context) error           { return errReaderOnly }
func (b *bench) natsFanout(context.Context) error    { return errReaderOnly }
func (b *bench) natsBigTable(context.Context) error  { return errReaderOnly }
func (b *bench) natsCatchUp(context.Context) error   { return errReaderOnly }
func (b *bench) redisFanout(context.Context) error   { return errReaderOnly }
func (b *bench) redisBigTable(context.Context) error { return errReaderOnly }
func (b *bench) redisCatchUp(context.Context) error  { return errReaderOnly }
