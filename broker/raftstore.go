package broker

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// raftStore is the Raft node's storage: raft.MemoryStorage, which the
// node reads, in front of a badger database in Config.DataDir/raft, which
// makes it durable (none with an empty DataDir). Each Ready is written to
// badger, synced, before it reaches the memory storage and before its
// messages are sent (the order Raft requires).
//
// Layout of the badger database (keys are ASCII prefixes, numbers
// big-endian):
//
//	id          this broker's Raft node id (8 bytes), written once
//	hs          the HardState (protobuf)
//	snap        the newest snapshot (protobuf raftpb.Snapshot; its data
//	            is the whole decided state, see fsm.encode)
//	e/<index>   one log entry (protobuf raftpb.Entry), for every index
//	            after the snapshot's
//
// Compaction (compact) takes a snapshot of the decided state and deletes
// the entries it covers, from both.
type raftStore struct {
	mem  *raft.MemoryStorage
	db   *badger.DB // nil: in memory only
	last uint64     // the index of the last entry written to db
	// commit is the commit index the stored HardState held at open.
	commit uint64
}

var (
	keyID   = []byte("id")
	keyHS   = []byte("hs")
	keySnap = []byte("snap")
)

func entryKey(i uint64) []byte {
	k := make([]byte, 2+8)
	copy(k, "e/")
	binary.BigEndian.PutUint64(k[2:], i)
	return k
}

// openRaftStore opens (or creates) the storage in dir ("" for memory
// only) and loads what it holds; id is the node id it records (0: none,
// a new member).
func openRaftStore(dir string, logger badger.Logger) (st *raftStore, id uint64, err error) {
	st = &raftStore{mem: raft.NewMemoryStorage()}
	if dir == "" {
		return st, 0, nil
	}
	opts := badger.DefaultOptions(filepath.Join(dir, "raft")).
		WithSyncWrites(true).
		WithLogger(logger).
		WithMemTableSize(8 << 20).
		WithValueThreshold(64 << 10).
		WithNumMemtables(2).
		WithBlockCacheSize(1 << 20).
		WithIndexCacheSize(1 << 20).
		WithNumCompactors(2).
		WithValueLogFileSize(16 << 20).
		WithCompression(options.None)
	if st.db, err = badger.Open(opts); err != nil {
		return nil, 0, fmt.Errorf("open raft storage: %w", err)
	}
	defer func() {
		if err != nil {
			st.db.Close()
		}
	}()
	err = st.db.View(func(txn *badger.Txn) error {
		if v, ok, err := get(txn, keyID); err != nil || !ok {
			return err
		} else if len(v) != 8 {
			return errors.New("raft storage: bad node id record")
		} else {
			id = binary.BigEndian.Uint64(v)
		}
		if v, ok, err := get(txn, keySnap); err != nil {
			return err
		} else if ok {
			var snap raftpb.Snapshot
			if err := snap.Unmarshal(v); err != nil {
				return fmt.Errorf("raft storage: snapshot: %w", err)
			}
			if err := st.mem.ApplySnapshot(snap); err != nil {
				return fmt.Errorf("raft storage: snapshot: %w", err)
			}
			st.last = snap.Metadata.Index
		}
		if v, ok, err := get(txn, keyHS); err != nil {
			return err
		} else if ok {
			var hs raftpb.HardState
			if err := hs.Unmarshal(v); err != nil {
				return fmt.Errorf("raft storage: hard state: %w", err)
			}
			if err := st.mem.SetHardState(hs); err != nil {
				return err
			}
			st.commit = hs.Commit
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("e/"), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		var ents []raftpb.Entry
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			var e raftpb.Entry
			if err := e.Unmarshal(v); err != nil {
				return fmt.Errorf("raft storage: entry: %w", err)
			}
			if e.Index <= st.last {
				continue // covered by the snapshot (a compaction cut short)
			}
			ents = append(ents, e)
		}
		if len(ents) > 0 {
			if err := st.mem.Append(ents); err != nil {
				return fmt.Errorf("raft storage: entries: %w", err)
			}
			st.last = ents[len(ents)-1].Index
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	return st, id, nil
}

func get(txn *badger.Txn, k []byte) ([]byte, bool, error) {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, err == nil, err
}

// setID records the node id of a new member.
func (s *raftStore) setID(id uint64) error {
	if s.db == nil {
		return nil
	}
	v := binary.BigEndian.AppendUint64(nil, id)
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyID, v) })
}

// save makes one Ready's state durable, then hands it to the memory
// storage.
func (s *raftStore) save(hs raftpb.HardState, ents []raftpb.Entry, snap raftpb.Snapshot) error {
	if s.db != nil && (!raft.IsEmptyHardState(hs) || len(ents) > 0 || !raft.IsEmptySnap(snap)) {
		err := s.db.Update(func(txn *badger.Txn) error {
			if !raft.IsEmptySnap(snap) {
				v, err := snap.Marshal()
				if err != nil {
					return err
				}
				if err := txn.Set(keySnap, v); err != nil {
					return err
				}
			}
			if !raft.IsEmptyHardState(hs) {
				v, err := hs.Marshal()
				if err != nil {
					return err
				}
				if err := txn.Set(keyHS, v); err != nil {
					return err
				}
			}
			for i := range ents {
				v, err := ents[i].Marshal()
				if err != nil {
					return err
				}
				if err := txn.Set(entryKey(ents[i].Index), v); err != nil {
					return err
				}
			}
			if len(ents) > 0 {
				// New entries replace every stored entry from their first
				// index on (a new leader's log wins over an old one).
				end := ents[len(ents)-1].Index
				for i := end + 1; i <= s.last; i++ {
					if err := txn.Delete(entryKey(i)); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("raft storage: save: %w", err)
		}
	}
	if !raft.IsEmptySnap(snap) {
		if err := s.mem.ApplySnapshot(snap); err != nil {
			return err
		}
		s.last = max(s.last, snap.Metadata.Index)
	}
	if !raft.IsEmptyHardState(hs) {
		if err := s.mem.SetHardState(hs); err != nil {
			return err
		}
	}
	if len(ents) > 0 {
		if err := s.mem.Append(ents); err != nil {
			return err
		}
		s.last = ents[len(ents)-1].Index
	}
	return nil
}

// compact snapshots the decided state data at index (applied) with the
// configuration cs, and deletes the entries it covers.
func (s *raftStore) compact(index uint64, cs raftpb.ConfState, data []byte) error {
	snap, err := s.mem.CreateSnapshot(index, &cs, data)
	if err != nil {
		if errors.Is(err, raft.ErrSnapOutOfDate) {
			return nil
		}
		return err
	}
	if s.db != nil {
		v, err := snap.Marshal()
		if err != nil {
			return err
		}
		first, _ := s.mem.FirstIndex()
		wb := s.db.NewWriteBatch()
		defer wb.Cancel()
		if err := wb.Set(keySnap, v); err != nil {
			return err
		}
		for i := max(first, 1) - 1; i <= index; i++ {
			if err := wb.Delete(entryKey(i)); err != nil {
				return err
			}
		}
		if err := wb.Flush(); err != nil {
			return fmt.Errorf("raft storage: compact: %w", err)
		}
	}
	if err := s.mem.Compact(index); err != nil && !errors.Is(err, raft.ErrCompacted) {
		return err
	}
	return nil
}

func (s *raftStore) close() error {
	if s.db == nil {
		return nil
	}
	return s.db.Close()
}
