package transport

import (
	"math"
	"slices"
)

// MaxEpochHistory bounds a table's epoch history; Append drops older
// entries (a consumer that old is far behind the trimmed log anyway).
const MaxEpochHistory = 1024

// EpochHistory is a table's epoch history: where each epoch began in its
// log, oldest first, one entry per epoch that wrote something. It travels
// in Start.Epochs (encoded as the plain list of EpochStart it is) and
// answers the questions a consumer asks of it: where did an epoch end
// (End), in which epoch was a seq written (EpochOf).
type EpochHistory []EpochStart

// End returns the first seq after epoch e (the seq where the next epoch
// began), or MaxUint64 when e is the newest epoch in h.
func (h EpochHistory) End(e uint64) uint64 {
	for _, s := range h {
		if s.Epoch > e {
			return s.Seq
		}
	}
	return math.MaxUint64
}

// EpochOf returns the epoch in which seq was written according to h (the
// epoch of the newest entry starting at or before seq); 0 when h says
// nothing about seq (it is empty, or seq is before its first entry).
func (h EpochHistory) EpochOf(seq uint64) uint64 {
	var e uint64
	for _, s := range h {
		if s.Seq > seq {
			break
		}
		e = s.Epoch
	}
	return e
}

// Append returns h with epoch e beginning at seq. An epoch that began at
// the same seq (it wrote nothing) is replaced, so restarts without writes
// do not grow the history; an epoch not above the newest one in h changes
// nothing. At most MaxEpochHistory entries are kept, the newest. It
// returns a new slice and never writes into h's array: copies of a
// table's meta share it (a sender encoding a Start frame raced a
// promotion replacing the last entry in place).
func (h EpochHistory) Append(e, seq uint64) EpochHistory {
	if n := len(h); n > 0 {
		last := h[n-1]
		if last.Epoch >= e {
			return h
		}
		if last.Seq >= seq {
			h = h[:n-1]
		}
	}
	h = append(slices.Clip(h), EpochStart{Epoch: e, Seq: seq})
	if len(h) > MaxEpochHistory {
		h = append(EpochHistory(nil), h[len(h)-MaxEpochHistory:]...)
	}
	return h
}
