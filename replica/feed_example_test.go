package replica_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/replmesh/replmesh/replica"
)

// A change-data capture consumer follows an owner's table from the oldest
// change its log holds, and saves the position with what it wrote, to
// resume from it later (FeedResume).
func ExampleComponent_Feed() {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	ocfg := replica.LocalConfig("stores", "stores-1")
	ocfg.Logger = quiet
	owner, err := replica.Open(ctx, ocfg)
	if err != nil {
		panic(err)
	}
	defer owner.Close()
	managers, _ := owner.Own("managers")
	managers.Put(ctx, []byte("store-1/alice"), []byte("manager"))
	managers.Apply(ctx, replica.Write{Key: []byte("store-2/bob"), Value: []byte("manager")},
		replica.Write{Key: []byte("store-1/alice"), Delete: true})

	ccfg := replica.LocalConfig("cdc", "cdc-1")
	ccfg.Logger = quiet
	cdc, err := replica.Open(ctx, ccfg)
	if err != nil {
		panic(err)
	}
	defer cdc.Close()
	feed, err := cdc.Feed(ctx, "stores", "managers", replica.FeedOptions{Start: replica.FeedFromOldest, Addr: owner.Addr()})
	if err != nil {
		panic(err)
	}
	defer feed.Close()
	for seen := 0; seen < 3; {
		b, err := feed.Next(ctx)
		if err != nil {
			panic(err) // a *FeedTrimmedError, a *FeedDivergedError, a refusal
		}
		for _, ch := range b.Changes {
			fmt.Printf("%d %s %s end-of-group=%v\n", ch.Seq, ch.Op, ch.Key, ch.TxnEnd)
			seen++
		}
	}
	fmt.Println("resume after seq", feed.Position().Seq)
	// Output:
	// 1 put store-1/alice end-of-group=true
	// 2 put store-2/bob end-of-group=false
	// 3 delete store-1/alice end-of-group=true
	// resume after seq 3
}
