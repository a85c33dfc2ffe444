package replica

import (
	"math"
	"slices"

	"github.com/replmesh/replmesh/transport"
)

// maxEpochHistory bounds a table's epoch history; older entries are dropped
// (a consumer that old is far behind the trimmed log anyway).
const maxEpochHistory = 1024

// epochEnd returns the first seq after epoch e in hist (the seq where the
// next epoch began), or MaxUint64 when e is the newest epoch in hist.
func epochEnd(hist []transport.EpochStart, e uint64) uint64 {
	for _, h := range hist {
		if h.Epoch > e {
			return h.Seq
		}
	}
	return math.MaxUint64
}

// epochOf returns the epoch in which seq was written according to hist
// (the epoch of the newest entry starting at or before seq); 0 when hist
// says nothing about seq.
func epochOf(hist []transport.EpochStart, seq uint64) uint64 {
	var e uint64
	for _, h := range hist {
		if h.Seq > seq {
			break
		}
		e = h.Epoch
	}
	return e
}

// appendEpoch records that epoch e begins at seq. An epoch that began at the
// same seq (it wrote nothing) is replaced, so restarts without writes do not
// grow the history. It returns a new slice and never writes into hist's
// array: copies of a table's meta share it (a sender encoding a Start
// frame raced a promotion replacing the last entry in place).
func appendEpoch(hist []transport.EpochStart, e, seq uint64) []transport.EpochStart {
	if n := len(hist); n > 0 {
		last := hist[n-1]
		if last.Epoch >= e {
			return hist
		}
		if last.Seq >= seq {
			hist = hist[:n-1]
		}
	}
	hist = append(slices.Clip(hist), transport.EpochStart{Epoch: e, Seq: seq})
	if len(hist) > maxEpochHistory {
		hist = append([]transport.EpochStart(nil), hist[len(hist)-maxEpochHistory:]...)
	}
	return hist
}

// resumable reports whether a consumer at (logID, seq, epoch) can continue
// from seq+1 in the table whose meta is m: same history, seq still in the
// log, not ahead of the head, and no change of its epoch beyond the point
// where that epoch ended here.
func resumable(m ownerMeta, logID string, seq, epoch uint64) bool {
	return logID == m.LogID &&
		seq <= m.Head &&
		seq+1 >= m.First &&
		epoch <= m.Epoch &&
		seq < epochEnd(m.Epochs, epoch)
}
