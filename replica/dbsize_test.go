package replica

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/internal/diskguard"
)

const mib = 1 << 20

// The sizing rules give each configuration the badger options it needs
// and no more: the memtable follows the largest transaction (a commit
// group's bytes and entries, a consumer's apply, an in-memory value), the
// caches and the value log follow where the tables live.
func TestConfig_DBSizing(t *testing.T) {
	disk := func(mutate func(*Config)) Config {
		c := LocalConfig("s", "i")
		c.DataDir = "/data"
		if mutate != nil {
			mutate(&c)
		}
		return c
	}
	mem := func(mutate func(*Config)) Config {
		c := LocalConfig("s", "i")
		if mutate != nil {
			mutate(&c)
		}
		return c
	}
	onDisk := func(memTable int64) dbSizing {
		return dbSizing{MemTable: memTable, ValueThreshold: diskguard.ValueThreshold, BlockCache: 32 * mib,
			IndexCache: 16 * mib, ValueLogFile: 64 * mib, NumMemtables: 3, NumCompactors: 2}
	}
	inMemory := func(memTable int64) dbSizing {
		return dbSizing{MemTable: memTable, ValueThreshold: mib, ValueLogFile: 64 * mib, NumMemtables: 3, NumCompactors: 2}
	}
	tests := []struct {
		name       string
		cfg        Config
		want       dbSizing
		startsSmal bool
	}{
		// 3 x 1 MiB groups and a consumer's 3 MiB apply, at 15%, need 20
		// MiB; bulk writes are faster with 32.
		{"defaults on disk", disk(nil), onDisk(32 * mib), true},
		{"defaults in memory", mem(nil), inMemory(32 * mib), true},
		{"small groups", disk(func(c *Config) {
			c.MaxGroupBytes, c.MaxApplyBytes, c.MaxGroupChanges = 64<<10, 64<<10, 512
		}), onDisk(32 * mib), true},
		// The rules' minimum with the defaults, given explicitly.
		{"explicit smallest memtable for the defaults", disk(func(c *Config) { c.MemTableSize = 20 * mib }), onDisk(20 * mib), false},
		// 3 x 4 MiB at 15% is 80 MiB.
		{"large groups", disk(func(c *Config) { c.MaxGroupBytes = 4 * mib }), onDisk(80 * mib), true},
		// 3 x 65536 entries (and one) of 96 bytes at 15%: just over 120 MiB.
		{"many changes per group", disk(func(c *Config) { c.MaxGroupChanges = 65536 }), onDisk(121 * mib), true},
		{"groups beyond the automatic range", disk(func(c *Config) { c.MaxGroupBytes = 64 * mib }), onDisk(256 * mib), true},
		{"explicit memtable on disk", disk(func(c *Config) { c.MemTableSize = 64 * mib }), onDisk(64 * mib), false},
		{"explicit memtable in memory", mem(func(c *Config) { c.MemTableSize = 32 * mib }), inMemory(32 * mib), false},
		{"owner instance in memory", mem(func(c *Config) { c.Owner, c.Brokers = true, []string{"127.0.0.1:1"} }), inMemory(32 * mib), false},
		{"no block cache", disk(func(c *Config) { c.BlockCacheSize = 0 }),
			func() dbSizing { s := onDisk(32 * mib); s.BlockCache = 0; return s }(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cfg.dbSizing(); got != tt.want {
				t.Errorf("dbSizing() = %+v, want %+v", got, tt.want)
			}
			if got := tt.cfg.startsSmall(); got != tt.startsSmal {
				t.Errorf("startsSmall() = %v, want %v", got, tt.startsSmal)
			}
		})
	}
	smallTests := []struct {
		name string
		cfg  Config
		want dbSizing
	}{
		{"in memory", mem(nil), dbSizing{MemTable: mib, ValueThreshold: 100 << 10, NumMemtables: 2, NumCompactors: 2}},
		{"on disk", disk(nil), dbSizing{MemTable: mib, ValueThreshold: diskguard.ValueThreshold, ValueLogFile: 64 * mib, NumMemtables: 2, NumCompactors: 2}},
	}
	for _, tt := range smallTests {
		t.Run("small database "+tt.name, func(t *testing.T) {
			if got := tt.cfg.smallDBSizing(); got != tt.want {
				t.Errorf("smallDBSizing() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// badger, opened with a sizing, takes the transactions the sizing plans
// for: its own limits (MaxBatchSize, MaxBatchCount) are above them, and a
// transaction of that many bytes and entries commits.
func TestConfig_DBSizingHoldsItsTransactions(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{"defaults", nil},
		{"the rules' minimum for the defaults", func(c *Config) { c.MemTableSize = 20 * mib }},
		{"large groups", func(c *Config) { c.MaxGroupBytes = 4 * mib }},
		{"many changes per group", func(c *Config) { c.MaxGroupChanges = 65536 }},
		{"explicit minimal memtable", func(c *Config) {
			c.MemTableSize, c.MaxGroupBytes, c.MaxApplyBytes, c.MaxGroupChanges = mib, 48<<10, 48<<10, 512
		}},
	}
	for _, tt := range tests {
		for _, inMemory := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, in memory %v", tt.name, inMemory), func(t *testing.T) {
				cfg := LocalConfig("s", "i")
				if tt.mutate != nil {
					tt.mutate(&cfg)
				}
				if !inMemory {
					cfg.DataDir = t.TempDir()
				}
				if err := cfg.Validate(); err != nil {
					if inMemory && cfg.MemTableSize != 0 {
						if !errors.Is(err, ErrInvalid) {
							t.Fatalf("Validate: %v, want ErrInvalid", err)
						}
						return // too small for in-memory values: refused, as it should be
					}
					t.Fatal(err)
				}
				db, err := openDB(cfg, cfg.dbSizing(), testLogger(t))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				groupBytes := int64(3 * cfg.MaxGroupBytes)
				groupEntries := int64(3 * cfg.MaxGroupChanges)
				if got := db.MaxBatchSize(); got < groupBytes {
					t.Errorf("MaxBatchSize %d < 3 x MaxGroupBytes %d", got, groupBytes)
				}
				if got := db.MaxBatchCount(); got <= groupEntries {
					t.Errorf("MaxBatchCount %d <= 3 x MaxGroupChanges %d", got, groupEntries)
				}
				if cfg.MemTableSize == 0 || cfg.MemTableSize >= 20*mib {
					if db.MaxBatchSize() < consumerTxnBytes {
						t.Errorf("MaxBatchSize %d < a consumer's apply %d", db.MaxBatchSize(), consumerTxnBytes)
					}
				}
				// One transaction of the group's entries, as many bytes as
				// the rule allows (less badger's per-entry estimate).
				txn := db.NewTransaction(true)
				defer txn.Discard()
				per := max(int64(1), (groupBytes*9/10)/groupEntries-12)
				for i := range groupEntries - 1 {
					key := fmt.Appendf(nil, "k%09d", i)
					val := make([]byte, max(0, per-int64(len(key))))
					if err := txn.Set(key, val); err != nil {
						t.Fatalf("entry %d of %d: %v", i, groupEntries, err)
					}
				}
				if err := txn.Commit(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// A component that is not an owner instance starts on the small database
// (in memory or on disk); the first Own or DiskOnly replica moves it to
// the full one, carrying what the small one held; the others open the
// full one.
func TestComponent_StartsSmall(t *testing.T) {
	ctx := context.Background()
	subscribe := func(diskOnly bool) func(t *testing.T, c *Component) error {
		return func(t *testing.T, c *Component) error {
			_, err := c.Subscribe(ctx, SubscribeOptions{Service: "o", Table: "t", Addr: "127.0.0.1:1", DiskOnly: diskOnly})
			return err
		}
	}
	own := func(t *testing.T, c *Component) error {
		_, err := c.Own("t")
		return err
	}
	type test struct {
		name      string
		dir       bool
		memTable  int64
		then      func(t *testing.T, c *Component) error
		wantSmall bool // after then
	}
	var tests []test
	for _, dir := range []bool{false, true} {
		where := map[bool]string{false: "in memory", true: "on disk"}[dir]
		tests = append(tests,
			test{where + ", idle", dir, 0, nil, true},
			test{where + ", a resident replica", dir, 0, subscribe(false), true},
			test{where + ", Own", dir, 0, own, false},
			test{where + ", a disk-only replica", dir, 0, subscribe(true), false},
			test{where + ", explicit memtable", dir, 32 * mib, nil, false})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig("s", "i")
			cfg.ListenAddr = ""
			cfg.MemTableSize = tt.memTable
			cfg.Logger = testLogger(t)
			if tt.dir {
				cfg.DataDir = t.TempDir()
			}
			c, err := Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer mustClose(t, c)
			// What the small database holds is carried over.
			if err := c.updateDB(func(txn *badger.Txn) error { return txn.Set([]byte("x/probe"), []byte("v")) }); err != nil {
				t.Fatal(err)
			}
			if tt.then != nil {
				if err := tt.then(t, c); err != nil {
					t.Fatal(err)
				}
			}
			c.mu.Lock()
			db, small := c.db, !c.full.Load()
			c.mu.Unlock()
			if got := small; got != tt.wantSmall {
				t.Fatalf("on the small database: %v, want %v", got, tt.wantSmall)
			}
			want := cfg.memTable()
			if tt.wantSmall {
				want = smallMemTable
			}
			if got := db.Opts().MemTableSize; got != want {
				t.Errorf("memtable %d, want %d", got, want)
			}
			err = db.View(func(txn *badger.Txn) error {
				item, err := txn.Get([]byte("x/probe"))
				if err != nil {
					return err
				}
				return item.Value(func(v []byte) error {
					if string(v) != "v" {
						return fmt.Errorf("probe value %q, want v", v)
					}
					return nil
				})
			})
			if err != nil {
				t.Fatalf("the probe written before: %v", err)
			}
		})
	}
}

// One Apply is one group commit, and the memtable is sized for
// MaxGroupChanges changes a group: an Apply of more is refused with
// ErrTooLarge (it used to reach badger, which failed the whole group with
// "Txn is too big"), and concurrent Applies at the bound, grouped
// together, all commit.
func TestOwnedTable_ApplyChangeCountBound(t *testing.T) {
	const maxChanges = 512
	owner := openWith(t, itOwner, "s1", t.TempDir(), "", func(c *Config) {
		c.MemTableSize, c.MaxGroupBytes, c.MaxApplyBytes, c.MaxGroupChanges = mib, 48<<10, 48<<10, maxChanges
	})
	defer mustClose(t, owner)
	tbl := mustOwn(t, owner)
	ctx := ctxT(t, time.Minute)
	deletes := func(n, from int) []Write {
		ws := make([]Write, n)
		for i := range ws {
			ws[i] = Write{Key: fmt.Appendf(nil, "%x", from+i), Delete: true}
		}
		return ws
	}
	tests := []struct {
		name    string
		changes int
		wantErr error
	}{
		{"one over the bound", maxChanges + 1, ErrTooLarge},
		{"four times the bound", 4 * maxChanges, ErrTooLarge},
		{"at the bound", maxChanges, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tbl.Head()
			_, err := tbl.Apply(ctx, deletes(tt.changes, 0)...)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Apply of %d changes: %v, want %v", tt.changes, err, tt.wantErr)
			}
			want := before
			if tt.wantErr == nil {
				want += uint64(tt.changes)
			}
			if got := tbl.Head(); got != want {
				t.Fatalf("head %d after the Apply, want %d", got, want)
			}
		})
	}
	t.Run("concurrent applies at the bound", func(t *testing.T) {
		const writers, each = 6, 4
		before := tbl.Head()
		errs := make(chan error, writers)
		for w := range writers {
			go func() {
				for i := range each {
					if _, err := tbl.Apply(ctx, deletes(maxChanges, (w*each+i)*maxChanges)...); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range writers {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if got, want := tbl.Head(), before+writers*each*maxChanges; got != want {
			t.Fatalf("head %d, want %d", got, want)
		}
	})
}
