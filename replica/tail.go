package replica

import (
	"sync"

	"github.com/replmesh/replmesh/transport"
)

// tail keeps a table's newest committed changes in memory, so subscribers
// that keep up are fed without reading the log back from badger. It is a
// ring bounded by count and bytes; older changes are read from the log.
type tail struct {
	mu       sync.RWMutex
	buf      []transport.Change // ring storage, len is the capacity in use
	start    int                // index of the oldest change
	n        int                // number of changes held
	first    uint64             // seq of the oldest change held (or of the next one when empty)
	bytes    int
	maxN     int
	maxBytes int
}

func newTail(maxN, maxBytes int) *tail { return &tail{maxN: maxN, maxBytes: maxBytes} }

// reset empties the ring; the next change appended must be next.
func (t *tail) reset(next uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.buf)
	t.start, t.n, t.bytes, t.first = 0, 0, 0, next
}

// append adds changes that directly follow the ones held.
func (t *tail) append(chs []transport.Change) {
	if t.maxN == 0 || t.maxBytes == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range chs {
		if chs[i].Seq != t.first+uint64(t.n) {
			// Not contiguous (cannot happen with one committer): start over.
			clear(t.buf)
			t.start, t.n, t.bytes, t.first = 0, 0, 0, chs[i].Seq
		}
		for t.n > 0 && (t.n >= t.maxN || t.bytes+chs[i].Size() > t.maxBytes) {
			t.popFront()
		}
		if t.n == len(t.buf) {
			t.grow()
		}
		t.buf[(t.start+t.n)%len(t.buf)] = chs[i]
		t.n++
		t.bytes += chs[i].Size()
	}
}

func (t *tail) popFront() {
	t.bytes -= t.buf[t.start].Size()
	t.buf[t.start] = transport.Change{}
	t.start = (t.start + 1) % len(t.buf)
	t.n--
	t.first++
}

func (t *tail) grow() {
	size := max(64, 2*len(t.buf))
	size = min(size, t.maxN)
	nb := make([]transport.Change, size)
	for i := 0; i < t.n; i++ {
		nb[i] = t.buf[(t.start+i)%len(t.buf)]
	}
	t.buf, t.start = nb, 0
}

// read appends to dst the changes from seq from on, at most maxN changes and
// about maxBytes bytes, extended to the end of the last commit group so a
// batch never splits an Apply. ok is false when from is older than the
// oldest change held (the caller reads the log instead).
func (t *tail) read(from uint64, maxN, maxBytes int, dst []transport.Change) (_ []transport.Change, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if from < t.first || t.n == 0 && from != t.first {
		return dst, false
	}
	size := 0
	for i := int(from - t.first); i < t.n; i++ {
		ch := &t.buf[(t.start+i)%len(t.buf)]
		dst = append(dst, *ch)
		size += ch.Size()
		if (len(dst) >= maxN || size >= maxBytes) && ch.TxnEnd {
			break
		}
	}
	return dst, true
}

// dropBefore forgets the changes older than seq (they were trimmed from
// the log; a consumer that needs them takes a full transfer).
func (t *tail) dropBefore(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.n > 0 && t.first < seq {
		t.popFront()
	}
	if t.n == 0 && t.first < seq {
		t.first = seq
	}
}
