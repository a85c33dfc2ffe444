package replica

import (
	"sync"
	"sync/atomic"

	"github.com/replmesh/replmesh/transport"
)

// tail keeps a table's newest committed changes in memory, so subscribers
// that keep up are fed without reading the log back from badger. It is a
// ring bounded by count and bytes; older changes are read from the log.
//
// It also holds each change's wire encoding, made once, the first time a
// stream sends the change (readEncoded), and shared by every stream that
// sends it after: with N subscribers a change is encoded once, not N
// times, and its bytes are not copied per stream.
type tail struct {
	mu       sync.RWMutex
	buf      []transport.Change // ring storage, len is the capacity in use
	enc      [][]byte           // enc[i]: the wire encoding of buf[i] (nil: not encoded yet)
	start    int                // index of the oldest change
	n        int                // number of changes held
	first    uint64             // seq of the oldest change held (or of the next one when empty)
	bytes    int
	maxN     int
	maxBytes int
	// encodes counts the changes encoded (readEncoded), for tests.
	encodes atomic.Uint64
	scratch []transport.Change // readEncoded's run of changes to encode (under mu)
	ends    []int
}

func newTail(maxN, maxBytes int) *tail { return &tail{maxN: maxN, maxBytes: maxBytes} }

// reset empties the ring; the next change appended must be next.
func (t *tail) reset(next uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.resetLocked(next)
}

func (t *tail) resetLocked(next uint64) {
	clear(t.buf)
	clear(t.enc)
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
			t.resetLocked(chs[i].Seq)
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
	t.bytes -= t.buf[t.start].Size() + len(t.enc[t.start])
	t.buf[t.start] = transport.Change{}
	t.enc[t.start] = nil
	t.start = (t.start + 1) % len(t.buf)
	t.n--
	t.first++
}

func (t *tail) grow() {
	size := max(64, 2*len(t.buf))
	size = min(size, t.maxN)
	nb := make([]transport.Change, size)
	ne := make([][]byte, size)
	for i := 0; i < t.n; i++ {
		nb[i] = t.buf[(t.start+i)%len(t.buf)]
		ne[i] = t.enc[(t.start+i)%len(t.buf)]
	}
	t.buf, t.enc, t.start = nb, ne, 0
}

// read appends to dst the changes from seq from on, at most maxN changes and
// about maxBytes bytes, extended to the end of the last commit group so a
// batch never splits an Apply. ok is false when from is older than the
// oldest change held (the caller reads the log instead).
func (t *tail) read(from uint64, maxN, maxBytes int, dst []transport.Change) (_ []transport.Change, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	i0, i1, ok := t.span(from, maxN, maxBytes)
	for i := i0; i < i1; i++ {
		dst = append(dst, t.buf[t.slot(i)])
	}
	return dst, ok
}

// slot is the ring index of the i-th change held.
func (t *tail) slot(i int) int { return (t.start + i) % len(t.buf) }

// span returns the changes a batch from seq from holds, as positions
// [i0, i1) in the ring (see read for the bounds); ok is false when from is
// older than the oldest change held. Called with mu held.
func (t *tail) span(from uint64, maxN, maxBytes int) (i0, i1 int, ok bool) {
	if from < t.first || t.n == 0 && from != t.first {
		return 0, 0, false
	}
	i0 = int(min(from-t.first, uint64(t.n)))
	size := 0
	for i1 = i0; i1 < t.n; {
		ch := &t.buf[t.slot(i1)]
		size += ch.Size()
		i1++
		if (i1-i0 >= maxN || size >= maxBytes) && ch.TxnEnd {
			break
		}
	}
	return i0, i1, true
}

// readEncoded is read returning the changes' wire encodings
// (transport.EncodeChanges) instead of the changes: parts, appended to
// dst, concatenate to the encodings of the n changes from seq from on.
// Changes not encoded yet are encoded here, once, and kept for the next
// stream. ok is false when from is older than the oldest change held.
func (t *tail) readEncoded(from uint64, maxN, maxBytes int, dst [][]byte) (parts [][]byte, n int, ok bool, err error) {
	t.mu.RLock()
	i0, i1, ok := t.span(from, maxN, maxBytes)
	if !ok || t.encodedSpan(i0, i1) {
		dst = t.collect(i0, i1, dst)
		t.mu.RUnlock()
		return dst, i1 - i0, ok, nil
	}
	t.mu.RUnlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if i0, i1, ok = t.span(from, maxN, maxBytes); !ok {
		return dst, 0, false, nil
	}
	// Encode each run of changes not encoded yet into one buffer, so
	// neighbours are contiguous and go out as one part.
	for i := i0; i < i1; {
		if t.enc[t.slot(i)] != nil {
			i++
			continue
		}
		j, size := i, 0
		t.scratch = t.scratch[:0]
		for ; j < i1 && t.enc[t.slot(j)] == nil; j++ {
			t.scratch = append(t.scratch, t.buf[t.slot(j)])
			size += t.buf[t.slot(j)].Size()
		}
		var buf []byte
		buf, t.ends, err = transport.EncodeChanges(make([]byte, 0, size), t.scratch, t.ends[:0])
		clear(t.scratch)
		if err != nil {
			return dst, 0, true, err
		}
		prev := 0
		for k, end := range t.ends {
			// No cap limit: neighbours in buf stay mergeable (collect).
			t.enc[t.slot(i+k)] = buf[prev:end]
			prev = end
		}
		t.bytes += len(buf)
		t.encodes.Add(uint64(j - i))
		i = j
	}
	return t.collect(i0, i1, dst), i1 - i0, true, nil
}

// encodedSpan reports whether the changes at [i0, i1) are all encoded.
func (t *tail) encodedSpan(i0, i1 int) bool {
	for i := i0; i < i1; i++ {
		if t.enc[t.slot(i)] == nil {
			return false
		}
	}
	return true
}

// collect appends the encodings of [i0, i1) to dst, merging neighbours
// that lie next to each other in one buffer.
func (t *tail) collect(i0, i1 int, dst [][]byte) [][]byte {
	for i := i0; i < i1; i++ {
		e := t.enc[t.slot(i)]
		if n := len(dst); n > 0 {
			if p := dst[n-1]; cap(p) > len(p) && &p[:len(p)+1][len(p)] == &e[0] {
				dst[n-1] = p[:len(p)+len(e)]
				continue
			}
		}
		dst = append(dst, e)
	}
	return dst
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
