// Package products is the Products service of the marketplace example. It
// lets a user add a product to a store only when the user manages that
// store, and it decides that from its own local replicas of the Stores
// service's tables `stores` and `store_managers`: no request to Stores is
// made on the decision path, so Products keeps deciding (from the last
// state it received) while Stores is down.
//
// Its own data, the products, lives in the table `products`, which it owns
// and which other services could subscribe to in turn.
package products

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/replmesh/replmesh/examples/marketplace/stores"
	"github.com/replmesh/replmesh/replica"
)

// ServiceName is the service's name.
const ServiceName = "products"

// TableProducts is the table of products, keyed by ProductKey.
const TableProducts = "products"

// Product is a row of table `products`.
type Product struct {
	ID         string `msgpack:"id"`
	StoreID    string `msgpack:"store"`
	Name       string `msgpack:"name"`
	PriceCents int64  `msgpack:"price"`
	AddedBy    string `msgpack:"by"`
	AddedAt    int64  `msgpack:"added"` // unix nanoseconds
}

// ProductKey is the key of a product: all products of a store share the
// prefix storeID + "/".
func ProductKey(storeID, productID string) string { return storeID + "/" + productID }

// Options configure the service.
type Options struct {
	// StoresAddr is the Stores service's replication address. Empty: the
	// component's brokers (Config.Brokers) say where the Stores primary
	// is, and the replicas follow it when it moves (a standby takes over).
	StoresAddr string
}

// Code says why a decision denied.
type Code int

// Decision codes.
const (
	// Allowed: the user manages the store.
	Allowed Code = iota
	// NotReady: the replica of store_managers has not completed its first
	// full transfer, so nothing can be decided yet (fail closed).
	NotReady
	// UnknownStore: the store does not exist in the replica.
	UnknownStore
	// NotManager: the store exists but the user does not manage it.
	NotManager
)

func (c Code) String() string {
	switch c {
	case Allowed:
		return "allowed"
	case NotReady:
		return "not-ready"
	case UnknownStore:
		return "unknown-store"
	case NotManager:
		return "not-manager"
	}
	return fmt.Sprintf("code(%d)", int(c))
}

// Decision is the outcome of an authorization check, with what it was based on.
type Decision struct {
	UserID  string
	StoreID string
	Code    Code
	// Reason explains the decision in one sentence.
	Reason string
	// ManagersSeq is the seq of the store_managers replica the decision
	// read; the decision reflects every change to the table up to it.
	ManagersSeq uint64
	// Staleness is how long ago the replica was last known to be current
	// (0 while it is in touch with Stores and caught up).
	Staleness time.Duration
}

// Allowed reports whether the decision allows the action.
func (d Decision) Allowed() bool { return d.Code == Allowed }

func (d Decision) String() string {
	verdict := "ALLOWED"
	if !d.Allowed() {
		verdict = "DENIED"
	}
	return fmt.Sprintf("%s (%s)", verdict, d.Reason)
}

// ErrDenied is wrapped by every *DeniedError.
var ErrDenied = errors.New("products: permission denied")

// DeniedError is returned by AddProduct when the decision denies.
type DeniedError struct{ Decision Decision }

func (e *DeniedError) Error() string {
	return fmt.Sprintf("products: %s may not add products to store %s: %s", e.Decision.UserID, e.Decision.StoreID, e.Decision.Reason)
}

// Unwrap returns ErrDenied.
func (e *DeniedError) Unwrap() error { return ErrDenied }

// Service is one running instance of the Products service.
type Service struct {
	c        *replica.Component
	storesR  *replica.Replica
	mgrsR    *replica.Replica
	stores   *replica.Table[stores.Store]
	managers *replica.Table[stores.Manager]
	products *replica.Table[Product]
}

// Open opens the service's component with cfg (cfg.Service is set to
// ServiceName), declares its table and subscribes to the Stores service's
// tables at opts.StoresAddr (or through the brokers). It returns at once;
// the replicas fill in the background (WaitReady, WaitFor). With
// cfg.Brokers, set cfg.Owner: the service owns table `products`, and the
// broker grants it the primary lease.
func Open(ctx context.Context, cfg replica.Config, opts Options) (*Service, error) {
	cfg.Service = ServiceName
	c, err := replica.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("products: %w", err)
	}
	s, err := New(ctx, c, opts)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return s, nil
}

// New declares the service's table and subscribes to Stores on an open
// component.
func New(ctx context.Context, c *replica.Component, opts Options) (*Service, error) {
	pt, err := c.Own(TableProducts)
	if err != nil {
		return nil, fmt.Errorf("products: %w", err)
	}
	sub := func(table string) (*replica.Replica, error) {
		r, err := c.Subscribe(ctx, replica.SubscribeOptions{Service: stores.ServiceName, Table: table, Addr: opts.StoresAddr})
		if err != nil {
			return nil, fmt.Errorf("products: subscribe to %s/%s: %w", stores.ServiceName, table, err)
		}
		return r, nil
	}
	sr, err := sub(stores.TableStores)
	if err != nil {
		return nil, err
	}
	mr, err := sub(stores.TableManagers)
	if err != nil {
		return nil, err
	}
	return &Service{
		c: c, storesR: sr, mgrsR: mr,
		stores:   replica.Typed[stores.Store](sr),
		managers: replica.Typed[stores.Manager](mr),
		products: replica.Typed[Product](pt),
	}, nil
}

// Component is the service's replication component.
func (s *Service) Component() *replica.Component { return s.c }

// Close stops the service; its replicas stay on disk (with a DataDir) and
// resume on the next Open.
func (s *Service) Close() error { return s.c.Close() }

// WaitReady blocks until both replicas hold a complete copy of their table
// and (with brokers) the instance holds the primary lease of its own
// table, so that AddProduct can write.
func (s *Service) WaitReady(ctx context.Context) error {
	for _, r := range []*replica.Replica{s.storesR, s.mgrsR} {
		select {
		case <-r.Ready():
		case <-ctx.Done():
			return fmt.Errorf("products: wait for replica %s: %w", r.Table(), ctx.Err())
		}
	}
	// The component has no notification of its role: poll it.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if role, _ := s.c.Role(); role == "primary" {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("products: wait for the primary lease: %w", ctx.Err())
		}
	}
}

// WaitFor blocks until the replica of commit's table holds commit: after
// it, every decision reflects that change (read-your-writes across
// services).
func (s *Service) WaitFor(ctx context.Context, commit stores.Commit) error {
	r, err := s.replica(commit.Table)
	if err != nil {
		return err
	}
	return r.WaitFor(ctx, commit.Seq)
}

// Status returns the state, position, lag and counters of the replica of
// the Stores table named table.
func (s *Service) Status(table string) (replica.Status, error) {
	r, err := s.replica(table)
	if err != nil {
		return replica.Status{}, err
	}
	return r.Status(), nil
}

// Replica returns the replica of the Stores table named table, for status
// pages and tools (Ready, Status, Mode); decisions go through Authorize.
func (s *Service) Replica(table string) (*replica.Replica, error) { return s.replica(table) }

func (s *Service) replica(table string) (*replica.Replica, error) {
	switch table {
	case stores.TableStores:
		return s.storesR, nil
	case stores.TableManagers:
		return s.mgrsR, nil
	}
	return nil, fmt.Errorf("products: no replica of %s/%s: %w", stores.ServiceName, table, replica.ErrUnknownTable)
}

// Authorize decides whether userID may add products to storeID, from the
// local replicas only. The error is for failures to read the replica, not
// for a denial (see Decision.Code).
func (s *Service) Authorize(userID, storeID string) (Decision, error) {
	d := Decision{UserID: userID, StoreID: storeID}
	if err := stores.ValidID("store", storeID); err != nil {
		return d, err
	}
	if err := stores.ValidID("user", userID); err != nil {
		return d, err
	}
	select {
	case <-s.mgrsR.Ready():
	default:
		d.Code, d.Reason = NotReady, "the store_managers replica has not received its first copy yet"
		return d, nil
	}
	lag := s.mgrsR.Lag()
	d.ManagersSeq, d.Staleness = s.mgrsR.Seq(), max(lag.Staleness, 0)
	// The manager row decides. Stores creates a store before its first
	// manager, but the two tables replicate independently, so the stores
	// replica is read only to explain a denial.
	_, isManager, err := s.managers.Get(stores.ManagerKey(storeID, userID))
	if err != nil {
		return d, fmt.Errorf("products: authorize: %w", err)
	}
	if isManager {
		d.Code, d.Reason = Allowed, fmt.Sprintf("%s manages store %s", userID, storeID)
		return d, nil
	}
	_, storeFound, err := s.stores.Get(stores.StoreKey(storeID))
	if err != nil {
		return d, fmt.Errorf("products: authorize: %w", err)
	}
	if !storeFound {
		d.Code, d.Reason = UnknownStore, fmt.Sprintf("store %s does not exist", storeID)
		return d, nil
	}
	d.Code, d.Reason = NotManager, fmt.Sprintf("%s is not a manager of store %s", userID, storeID)
	return d, nil
}

// AddProduct adds p to storeID on behalf of userID, if userID manages the
// store (Authorize). A denial is a *DeniedError (errors.Is ErrDenied) that
// carries the decision. An empty p.ID gets a random one. It returns the
// stored product and the seq of its commit in table `products`.
func (s *Service) AddProduct(ctx context.Context, userID, storeID string, p Product) (Product, uint64, error) {
	d, err := s.Authorize(userID, storeID)
	if err != nil {
		return Product{}, 0, err
	}
	if !d.Allowed() {
		return Product{}, 0, &DeniedError{Decision: d}
	}
	if p.ID == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		p.ID = hex.EncodeToString(b[:])
	}
	if err := stores.ValidID("product", p.ID); err != nil {
		return Product{}, 0, err
	}
	p.StoreID, p.AddedBy, p.AddedAt = storeID, userID, time.Now().UnixNano()
	seq, err := s.products.Put(ctx, ProductKey(storeID, p.ID), p)
	if err != nil {
		return Product{}, 0, fmt.Errorf("products: add %s to %s: %w", p.ID, storeID, err)
	}
	return p, seq, nil
}

// Products lists the products of storeID.
func (s *Service) Products(storeID string) ([]Product, error) {
	var out []Product
	_, err := s.products.Scan(storeID+"/", func(_ string, p Product) bool {
		out = append(out, p)
		return true
	})
	return out, err
}
