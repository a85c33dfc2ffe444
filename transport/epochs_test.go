package transport

import (
	"bytes"
	"math"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// testHistory: epoch 1 from seq 1, epoch 3 from 11 (epoch 2 wrote
// nothing), epoch 4 from 20.
var testHistory = EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 11}, {Epoch: 4, Seq: 20}}

func TestEpochHistory_End(t *testing.T) {
	tests := []struct {
		name  string
		hist  EpochHistory
		epoch uint64
		want  uint64
	}{
		{"before the first epoch", testHistory, 0, 1},
		{"first epoch", testHistory, 1, 11},
		{"an epoch that wrote nothing ends where the next began", testHistory, 2, 11},
		{"middle epoch", testHistory, 3, 20},
		{"newest epoch has no end", testHistory, 4, math.MaxUint64},
		{"newer than the history", testHistory, 9, math.MaxUint64},
		{"empty history", nil, 1, math.MaxUint64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.hist.End(tt.epoch); got != tt.want {
				t.Fatalf("End(%d) = %d, want %d", tt.epoch, got, tt.want)
			}
		})
	}
}

func TestEpochHistory_EpochOf(t *testing.T) {
	tests := []struct {
		name string
		hist EpochHistory
		seq  uint64
		want uint64
	}{
		{"before the first entry", testHistory, 0, 0},
		{"first seq of the first epoch", testHistory, 1, 1},
		{"last seq of the first epoch", testHistory, 10, 1},
		{"first seq of epoch 3", testHistory, 11, 3},
		{"last seq of epoch 3", testHistory, 19, 3},
		{"first seq of the newest epoch", testHistory, 20, 4},
		{"far past the newest start", testHistory, 1000, 4},
		{"empty history", nil, 5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.hist.EpochOf(tt.seq); got != tt.want {
				t.Fatalf("EpochOf(%d) = %d, want %d", tt.seq, got, tt.want)
			}
		})
	}
}

func TestEpochHistory_Append(t *testing.T) {
	type step struct{ epoch, seq uint64 }
	tests := []struct {
		name  string
		start EpochHistory
		steps []step
		want  EpochHistory
	}{
		{"first entry", nil, []step{{1, 1}}, EpochHistory{{Epoch: 1, Seq: 1}}},
		{"a new epoch after writes", nil, []step{{1, 1}, {2, 5}}, EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 5}}},
		{"an epoch that wrote nothing is replaced", nil, []step{{1, 1}, {2, 5}, {3, 5}},
			EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 5}}},
		{"an older epoch is ignored", nil, []step{{1, 1}, {3, 5}, {2, 9}},
			EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 3, Seq: 5}}},
		{"the same epoch again is ignored", nil, []step{{1, 1}, {1, 9}}, EpochHistory{{Epoch: 1, Seq: 1}}},
		{"replacing the only entry", EpochHistory{{Epoch: 1, Seq: 4}}, []step{{2, 4}}, EpochHistory{{Epoch: 2, Seq: 4}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.start
			for _, s := range tt.steps {
				h = h.Append(s.epoch, s.seq)
			}
			if !reflect.DeepEqual(h, tt.want) {
				t.Fatalf("history %v, want %v", h, tt.want)
			}
		})
	}
	t.Run("bounded by MaxEpochHistory, newest kept", func(t *testing.T) {
		var h EpochHistory
		for i := range 2 * MaxEpochHistory {
			h = h.Append(uint64(10+i), uint64(10+i))
		}
		if len(h) != MaxEpochHistory {
			t.Fatalf("history grew to %d entries, want %d", len(h), MaxEpochHistory)
		}
		if last, want := h[len(h)-1].Epoch, uint64(10+2*MaxEpochHistory-1); last != want {
			t.Fatalf("newest entry is epoch %d, want %d", last, want)
		}
	})
	t.Run("never writes into the array it was given", func(t *testing.T) {
		shared := EpochHistory{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 5}}
		before := append(EpochHistory(nil), shared...)
		_ = shared.Append(3, 5)     // replaces the last entry
		_ = shared[:1].Append(4, 9) // appends after a prefix
		if !reflect.DeepEqual(shared, before) {
			t.Fatalf("Append wrote into its input: %v, was %v", shared, before)
		}
	})
}

// EpochHistory is a name for []EpochStart, not a new encoding: a Start
// encodes to the same bytes as it did when the field was a plain slice,
// and either form decodes the other.
func TestEpochHistory_WireUnchanged(t *testing.T) {
	type oldStart struct {
		Version  uint32       `msgpack:"v"`
		LogID    string       `msgpack:"log"`
		Epoch    uint64       `msgpack:"ep"`
		HeadSeq  uint64       `msgpack:"head"`
		FirstSeq uint64       `msgpack:"first"`
		Resume   bool         `msgpack:"resume"`
		Epochs   []EpochStart `msgpack:"eps,omitempty"`
		Mode     string       `msgpack:"mode,omitempty"`
	}
	tests := []struct {
		name   string
		epochs []EpochStart
	}{
		{"nil", nil},
		{"one", []EpochStart{{Epoch: 1, Seq: 1}}},
		{"several", testHistory},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := oldStart{Version: ProtocolVersion, LogID: "L", Epoch: 4, HeadSeq: 30, FirstSeq: 5, Epochs: tt.epochs, Mode: "pull"}
			cur := Start{Version: ProtocolVersion, LogID: "L", Epoch: 4, HeadSeq: 30, FirstSeq: 5, Epochs: tt.epochs, Mode: "pull"}
			ob, err := msgpack.Marshal(&old)
			if err != nil {
				t.Fatal(err)
			}
			nb, err := msgpack.Marshal(&cur)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(ob, nb) {
				t.Fatalf("encoding changed:\nold %x\nnew %x", ob, nb)
			}
			var back Start
			if err := msgpack.Unmarshal(ob, &back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual([]EpochStart(back.Epochs), tt.epochs) {
				t.Fatalf("decoded %v, want %v", back.Epochs, tt.epochs)
			}
		})
	}
}
