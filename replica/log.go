package replica

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/replmesh/replmesh/transport"
)

// readChanges returns the committed changes from seq from on (at most about
// maxN changes and maxBytes bytes, never splitting a commit group), from the
// in-memory tail when it still holds them, else from the durable log. It
// returns transport.ErrResync when the log no longer holds from.
func (t *OwnedTable) readChanges(from uint64, maxN, maxBytes int, dst []transport.Change) ([]transport.Change, error) {
	if out, ok := t.tail.read(from, maxN, maxBytes, dst); ok {
		return out, nil
	}
	return t.readLog(from, maxN, maxBytes, dst)
}

// readLog is readChanges from the durable log alone.
func (t *OwnedTable) readLog(from uint64, maxN, maxBytes int, dst []transport.Change) ([]transport.Change, error) {
	err := t.scanLog(from, maxN, maxBytes, func(chs []transport.Change) error {
		// The keys and values copied out at once, into one buffer (the
		// changes handed over alias the group's bytes).
		n := 0
		for i := range chs {
			n += len(chs[i].Key) + len(chs[i].Value)
		}
		buf := make([]byte, 0, n)
		for _, ch := range chs {
			buf, ch.Key = appendAliased(buf, ch.Key)
			buf, ch.Value = appendAliased(buf, ch.Value)
			dst = append(dst, ch)
		}
		return nil
	})
	return dst, err
}

// appendAliased appends b to buf, which has room for it, and returns buf
// and the copy (nil for nil).
func appendAliased(buf, b []byte) ([]byte, []byte) {
	if b == nil {
		return buf, nil
	}
	n := len(buf)
	buf = append(buf, b...)
	return buf, buf[n:len(buf):len(buf)]
}

// readLogEncoded is readLog returning the changes' wire encodings
// (transport.EncodeChanges) appended to dst, built from the stored
// entries with one copy of each key and value, and how many changes
// they are: an owner catching a consumer up from its log sends them as
// they are (transport.EncodedChanges), with no transport.Change kept in
// between.
func (t *OwnedTable) readLogEncoded(from uint64, maxN, maxBytes int, dst []byte) ([]byte, int, error) {
	if dst == nil {
		// A frame's worth of room at once (encodedFrameCap). Grown
		// group by group, by a quarter at a time once large, a 256 KiB
		// frame was copied over a dozen times: a third of the owner's
		// CPU in a catch-up from the log.
		dst = make([]byte, 0, encodedFrameCap(maxBytes))
	}
	n := 0
	err := t.scanLog(from, maxN, maxBytes, func(chs []transport.Change) error {
		// Room for the group's encodings (when the frame outgrows the
		// room made above), grown once a group, not per append.
		size := 0
		for i := range chs {
			size += len(chs[i].Key) + len(chs[i].Value) + wireFraming
		}
		dst = slices.Grow(dst, size)
		for i := range chs {
			dst = transport.AppendChange(dst, &chs[i])
		}
		n += len(chs)
		return nil
	})
	return dst, n, err
}

// wireFraming bounds what a change's wire encoding takes beyond its key
// and value: the array header, ints, bin headers and bool, 9 to 40 bytes.
const wireFraming = 40

// encodedFrameCap is the room readLogEncoded makes for a frame of
// maxBytes: a frame of changes is cut at the end of the Apply that
// reaches maxBytes (counted by Change.Size, about its wire size), so it
// rarely ends much beyond it; at most 1 MiB and a little, so that a
// large budget read from a short log allocates no more.
func encodedFrameCap(maxBytes int) int {
	c := min(maxBytes, 1<<20)
	return c + c/8
}

// scanLog walks the durable log from seq from on, at most about maxN
// changes and maxBytes bytes, extended to the end of the last commit
// group (a batch never splits an Apply), handing take the changes it
// read from each group, decoded once: they alias the group's bytes and
// are valid during the call only. It returns transport.ErrResync when the
// log no longer holds from.
func (t *OwnedTable) scanLog(from uint64, maxN, maxBytes int, take func(chs []transport.Change) error) error {
	t.mu.Lock()
	first, head := t.meta.First, t.meta.Head
	t.mu.Unlock()
	if from < first {
		return fmt.Errorf("%w: seq %d of %s was trimmed (log starts at %d)", transport.ErrResync, from, t.name, first)
	}
	if from > head {
		return nil
	}
	defer t.c.reads.leave()
	if t.c.reads.enter() != nil {
		return fmt.Errorf("%w: owner is shutting down", transport.ErrUnavailable)
	}
	want, size, taken := from, 0, 0
	var chs []transport.Change // one group's, reused
	err := t.view(func(txn *badger.Txn) error {
		return t.eachGroup(txn, from, func(_ uint64, g *logGroup) (bool, error) {
			i, _ := g.find(want)
			if i == g.n {
				return true, nil // its entries from want on were trimmed
			}
			// The entries taken, [i, j), decoded from the group's bytes.
			chs = chs[:0]
			j, done := i, false
			for ; j < g.n && !done; j++ {
				seq := g.seq(j)
				if seq != want {
					return false, fmt.Errorf("%w: log of %s has seq %d where %d was expected (trimmed meanwhile)", transport.ErrResync, t.name, seq, want)
				}
				v, err := g.entry(j)
				if err != nil {
					return false, err
				}
				ch, err := decodeLogEntry(seq, v)
				if err != nil {
					return false, err
				}
				chs = append(chs, ch)
				size += ch.Size()
				want++
				done = (taken+j+1-i >= maxN || size >= maxBytes) && ch.TxnEnd
			}
			taken += j - i
			return !done, take(chs)
		})
	})
	if err == nil && want == from {
		err = fmt.Errorf("%w: seq %d of %s is not in the log", transport.ErrResync, from, t.name)
	}
	return err
}

// trimLoop trims every owned table's log on the configured interval.
func (c *Component) trimLoop() {
	defer c.wg.Done()
	tk := time.NewTicker(c.cfg.TrimInterval)
	defer tk.Stop()
	for {
		select {
		case <-c.done():
			return
		case now := <-tk.C:
			for _, t := range c.ownedTables() {
				if err := t.trim(now); err != nil {
					c.log.Error("trim log", "table", t.name, "err", err)
				}
			}
		}
	}
}

// ownedTables returns the owned tables (in no particular order).
func (c *Component) ownedTables() []*OwnedTable {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.owned))
}

// trim drops the oldest log entries beyond the retention limits: they
// leave the window consumers are served from, and those that are still a
// row's value stay below it (trimKept). The new first seq is published
// before the entries are touched, so a reader that races with the
// deletion sees ErrResync, never a gap. trimMu keeps a restore or a
// standby's transfer from emptying the table meanwhile (a new history
// could reuse the seqs being trimmed).
func (t *OwnedTable) trim(now time.Time) error {
	t.trimMu.Lock()
	defer t.trimMu.Unlock()
	t.mu.Lock()
	r := t.retention
	first, head, size := t.meta.First, t.meta.Head, t.logSize
	t.mu.Unlock()
	newFirst := first
	if r.MaxChanges > 0 && head+1-first > r.MaxChanges {
		newFirst = head + 1 - r.MaxChanges
	}
	var dropped int64
	if (r.MaxBytes > 0 && size > r.MaxBytes) || r.MaxAge > 0 {
		cutoff := now.Add(-r.MaxAge).UnixNano()
		err := t.view(func(txn *badger.Txn) error {
			return t.eachGroup(txn, first, func(_ uint64, g *logGroup) (bool, error) {
				i, _ := g.find(first)
				for ; i < g.n; i++ {
					seq := g.seq(i)
					s, e := g.span(i)
					v := g.data[s:e]
					overBytes := r.MaxBytes > 0 && size-dropped > r.MaxBytes
					tooOld := false
					if r.MaxAge > 0 && !overBytes && len(v) >= 18 {
						tooOld = int64(binary.BigEndian.Uint64(v[2:10])) < cutoff
					}
					if !overBytes && !tooOld && seq >= newFirst {
						return false, nil
					}
					dropped += int64(len(v))
					newFirst = max(newFirst, seq+1)
				}
				return true, nil
			})
		})
		if err != nil {
			return err
		}
	}
	if newFirst <= first {
		return nil
	}
	t.mu.Lock()
	if t.meta.First != first || t.restoring.Load() {
		// A restore replaced the table while the log was measured: its
		// log is another one (trimmed next round).
		t.mu.Unlock()
		return nil
	}
	t.meta.First = newFirst
	t.logSize -= dropped
	t.mu.Unlock()
	t.tail.dropBefore(newFirst)
	if err := t.trimKept(first, newFirst); err != nil {
		return err
	}
	return t.retireSegments(newFirst)
}
