// Package replica is the replication component a service embeds.
//
// An owner declares tables with Component.Own and writes them with Put,
// Delete and Apply; every commit gets a per-table seq and lands, in one
// badger transaction, in the rows, the change log and the table's head.
// Concurrent writers share group commits.
//
// A consumer calls Component.Subscribe for each table it needs. The replica
// is filled by a full state transfer from a consistent snapshot on first
// start, then kept current by the owner's push stream; after any restart or
// disconnect it resumes from its durable cursor. Reads (Get, Scan, Digest)
// are local; WaitFor gives read-your-writes across services; OnChange and
// Watch deliver changes in commit order once they are durable.
//
//	owner, _ := replica.Open(ctx, cfgStores)
//	managers, _ := owner.Own("store_managers")
//	seq, _ := managers.Put(ctx, []byte("store-1/alice"), []byte("{}"))
//
//	products, _ := replica.Open(ctx, cfgProducts)
//	r, _ := products.Subscribe(ctx, replica.SubscribeOptions{
//		Service: "stores", Table: "store_managers", Addr: owner.Addr()})
//	_ = r.WaitFor(ctx, seq)
//	_, ok, _ := r.Get([]byte("store-1/alice")) // ok == true, no network
//
// An owner that lost its data dir and every standby gets a table back from
// a consumer's replica with Component.Restore (PlanRestore shows what it
// would do; see restore.go): the owner continues the replica's history at a
// new epoch, and the consumers resume, or take a full transfer.
//
//	res, err := owner.Restore(ctx, "store_managers", replica.RestoreOptions{
//		Source: transport.RestoreSource{Service: "products", Addr: products.Addr()}})
//
// Typed[V] wraps either side with msgpack-encoded Go values.
package replica
