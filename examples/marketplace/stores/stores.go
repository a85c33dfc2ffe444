// Package stores is the Stores service of the marketplace example: it owns
// the tables `stores` (one row per store) and `store_managers` (one row per
// user who manages a store) and is the only writer of both.
//
// Other services never call it to make decisions: they subscribe to its
// tables (see package products) and read their local replicas. Every write
// returns a Commit, the (table, seq) of the change, so a caller that goes on
// to another service can hand it the Commit and that service can wait until
// its replica holds the change (read-your-writes across services).
//
// Several instances of the service may run (Config.Owner with
// Config.Brokers): the broker grants one of them the primary lease, and the
// others are standbys that keep a copy of its tables, refuse writes
// (replica's ErrNotPrimary, naming the primary), and take over when the
// primary goes away. With Config.MinSyncStandbys a write returns only once
// a standby holds it.
//
// The schema (row types, table names, key layout) is exported so consumers
// decode the replicated rows with the same types.
package stores

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/replmesh/replmesh/replica"
)

// ServiceName is the service name consumers subscribe to.
const ServiceName = "stores"

// Table names owned by the service.
const (
	TableStores   = "stores"
	TableManagers = "store_managers"
)

// Store is a row of table `stores`, keyed by StoreKey(ID).
type Store struct {
	ID        string `msgpack:"id"`
	Name      string `msgpack:"name"`
	CreatedAt int64  `msgpack:"created"` // unix nanoseconds
}

// Manager is a row of table `store_managers`, keyed by
// ManagerKey(StoreID, UserID): user UserID manages store StoreID.
type Manager struct {
	StoreID string `msgpack:"store"`
	UserID  string `msgpack:"user"`
	AddedAt int64  `msgpack:"added"` // unix nanoseconds
}

// StoreKey is the key of store id in table `stores`.
func StoreKey(id string) string { return id }

// ManagerKey is the key of "user manages store" in table `store_managers`.
// All managers of a store share the prefix ManagersPrefix(storeID).
func ManagerKey(storeID, userID string) string { return storeID + "/" + userID }

// ManagersPrefix is the key prefix of every manager of storeID.
func ManagersPrefix(storeID string) string { return storeID + "/" }

// Commit names one committed change: the table it went to and its seq in
// that table. Seqs are per table, so both are needed to wait for it.
//
// A write that fails with replica.ErrNotReplicated (min_sync_standbys)
// still returns its Commit when it was committed on the primary and only
// the standby's confirmation is missing; a zero Commit means nothing was
// written (no standby was connected) and the write may be retried.
type Commit struct {
	Table string
	Seq   uint64
}

func (c Commit) String() string { return fmt.Sprintf("%s@%d", c.Table, c.Seq) }

// Errors returned by the service.
var (
	// ErrInvalidID: an id is empty, too long, or contains '/'.
	ErrInvalidID = errors.New("stores: invalid id")
	// ErrStoreExists: CreateStore of an id that is taken.
	ErrStoreExists = errors.New("stores: store already exists")
	// ErrNoStore: the store does not exist.
	ErrNoStore = errors.New("stores: no such store")
)

// ValidID checks a store or user id: 1-128 bytes, no '/' (it separates the
// parts of a manager key).
func ValidID(what, id string) error {
	if id == "" || len(id) > 128 || strings.Contains(id, "/") {
		return fmt.Errorf("%w: %s %q must be 1-128 bytes without '/'", ErrInvalidID, what, id)
	}
	return nil
}

// Service is one running instance of the Stores service.
type Service struct {
	c        *replica.Component
	stores   *replica.Table[Store]
	managers *replica.Table[Manager]
	tables   []*replica.OwnedTable // stores, store_managers

	// mu serializes the read-check-write operations (a store must exist
	// before it gets managers, an id is created once).
	mu sync.Mutex
}

// Open opens the service's replication component with cfg (cfg.Service is
// set to ServiceName) and declares its tables. A cfg.DataDir that held the
// service before resumes its tables' histories; consumers then resume
// their replicas instead of copying them again. With cfg.Brokers, set
// cfg.Owner: the instance writes only once the broker grants it the
// primary lease (Component().Role()).
func Open(ctx context.Context, cfg replica.Config) (*Service, error) {
	cfg.Service = ServiceName
	c, err := replica.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("stores: %w", err)
	}
	s, err := New(c)
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return s, nil
}

// New declares the service's tables on an open component.
func New(c *replica.Component) (*Service, error) {
	st, err := c.Own(TableStores)
	if err != nil {
		return nil, fmt.Errorf("stores: %w", err)
	}
	mt, err := c.Own(TableManagers)
	if err != nil {
		return nil, fmt.Errorf("stores: %w", err)
	}
	return &Service{c: c, stores: replica.Typed[Store](st), managers: replica.Typed[Manager](mt),
		tables: []*replica.OwnedTable{st, mt}}, nil
}

// Tables returns the service's owned tables, `stores` then
// `store_managers` (on a standby: its copies of the primary's), for status
// pages: their heads and log ids.
func (s *Service) Tables() []*replica.OwnedTable { return slices.Clone(s.tables) }

// Component is the service's replication component.
func (s *Service) Component() *replica.Component { return s.c }

// Instance is the instance's name (Config.Instance).
func (s *Service) Instance() string { return s.c.Config().Instance }

// Addr is the address consumers subscribe to.
func (s *Service) Addr() string { return s.c.Addr() }

// Close stops the service: consumers keep their replicas and reconnect
// when it is back.
func (s *Service) Close() error { return s.c.Close() }

// CreateStore creates store id named name.
func (s *Service) CreateStore(ctx context.Context, id, name string) (Commit, error) {
	if err := ValidID("store", id); err != nil {
		return Commit{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, found, err := s.stores.Get(StoreKey(id))
	if err != nil {
		return Commit{}, fmt.Errorf("stores: create %s: %w", id, err)
	}
	if found {
		return Commit{}, fmt.Errorf("%w: %s", ErrStoreExists, id)
	}
	seq, err := s.stores.Put(ctx, StoreKey(id), Store{ID: id, Name: name, CreatedAt: time.Now().UnixNano()})
	if err != nil {
		return commitOf(TableStores, seq), fmt.Errorf("stores: create %s: %w", id, err)
	}
	return Commit{Table: TableStores, Seq: seq}, nil
}

// commitOf is the Commit of a failed write that returned seq: zero when
// nothing was committed.
func commitOf(table string, seq uint64) Commit {
	if seq == 0 {
		return Commit{}
	}
	return Commit{Table: table, Seq: seq}
}

// Store returns store id as the owner holds it.
func (s *Service) Store(id string) (Store, bool, error) { return s.stores.Get(StoreKey(id)) }

// AddManager makes userID a manager of storeID, which must exist. Adding a
// manager again is allowed (it is a new commit).
func (s *Service) AddManager(ctx context.Context, storeID, userID string) (Commit, error) {
	if err := ValidID("store", storeID); err != nil {
		return Commit{}, err
	}
	if err := ValidID("user", userID); err != nil {
		return Commit{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, found, err := s.stores.Get(StoreKey(storeID))
	if err != nil {
		return Commit{}, fmt.Errorf("stores: add manager: %w", err)
	}
	if !found {
		return Commit{}, fmt.Errorf("%w: %s", ErrNoStore, storeID)
	}
	seq, err := s.managers.Put(ctx, ManagerKey(storeID, userID), Manager{StoreID: storeID, UserID: userID, AddedAt: time.Now().UnixNano()})
	if err != nil {
		return commitOf(TableManagers, seq), fmt.Errorf("stores: add manager %s to %s: %w", userID, storeID, err)
	}
	return Commit{Table: TableManagers, Seq: seq}, nil
}

// RevokeManager removes userID from the managers of storeID. It is
// idempotent: revoking a user who is not a manager still commits (a delete
// of a missing row), so the returned Commit is always one to wait for.
func (s *Service) RevokeManager(ctx context.Context, storeID, userID string) (Commit, error) {
	if err := ValidID("store", storeID); err != nil {
		return Commit{}, err
	}
	if err := ValidID("user", userID); err != nil {
		return Commit{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, err := s.managers.Delete(ctx, ManagerKey(storeID, userID))
	if err != nil {
		return commitOf(TableManagers, seq), fmt.Errorf("stores: revoke manager %s of %s: %w", userID, storeID, err)
	}
	return Commit{Table: TableManagers, Seq: seq}, nil
}

// Managers lists the managers of storeID as the owner holds them.
func (s *Service) Managers(storeID string) ([]string, error) {
	var users []string
	_, err := s.managers.Scan(ManagersPrefix(storeID), func(_ string, m Manager) bool {
		users = append(users, m.UserID)
		return true
	})
	return users, err
}
