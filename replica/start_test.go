package replica

import (
	"errors"
	"math"
	"testing"

	"github.com/replmesh/replmesh/transport"
)

// TestDecideStart has a row for every branch of the start decision, in the
// order decideStart documents its rules.
func TestDecideStart(t *testing.T) {
	hist := []transport.EpochStart{{Epoch: 1, Seq: 1}, {Epoch: 2, Seq: 50}, {Epoch: 3, Seq: 80}}
	held := cursor{LogID: "L", Epoch: 2, Seq: 60}
	tests := []struct {
		name     string
		in       startInput
		want     startAction
		wantEnd  uint64
		wantErr  error
		wantText string
	}{
		{
			name:    "an owner below the broker's epoch was deposed",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Resume: true}, MinEpoch: 4, Owner: "h:1"},
			want:    startRefused,
			wantErr: ErrStaleEpoch, wantText: "replica: stale epoch: owner at h:1 is at epoch 3, the broker's primary is at epoch 4",
		},
		{
			name:    "a deposed owner is refused even by an accepting replica with no copy",
			in:      startInput{Accept: true, Start: &transport.Start{LogID: "L", Epoch: 3}, MinEpoch: 4},
			want:    startRefused,
			wantErr: ErrStaleEpoch,
		},
		{
			name: "an owner at the broker's epoch is taken",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 4, HeadSeq: 90, Resume: true}, MinEpoch: 4},
			want: startResume,
		},
		{
			name:    "an owner below the replica's epoch is refused",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 90, Resume: true}},
			want:    startRefused,
			wantErr: ErrStaleEpoch, wantText: "replica: stale epoch: owner is at epoch 1, replica at 2",
		},
		{
			name: "an accepting replica takes an owner below its epoch",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "M", Epoch: 1, HeadSeq: 10}},
			want: startTransfer,
		},
		{
			name: "another history at least as long is transferred",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 60}},
			want: startTransfer,
		},
		{
			name: "another, shorter history has diverged",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 59}},
			want: startDiverged,
		},
		{
			name: "another history is no truncate whatever its epochs say",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 3, HeadSeq: 100, Epochs: []transport.EpochStart{{Epoch: 3, Seq: 1}}}},
			want: startTransfer,
		},
		{
			name:    "the replica's epoch ended at its seq: truncate",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 80}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want:    startTruncate,
			wantEnd: 80,
		},
		{
			name:    "the replica's epoch ended before its seq: truncate, even with an owner head below it",
			in:      startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 85}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 82, Epochs: hist}},
			want:    startTruncate,
			wantEnd: 80,
		},
		{
			name: "same history, replica behind the log: transfer",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, FirstSeq: 70, Epochs: hist}},
			want: startTransfer,
		},
		{
			name: "same history, replica in its epoch but past the owner's head: diverged",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 3, Seq: 95}, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want: startDiverged,
		},
		{
			name: "an accepting replica never diverges",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 1}},
			want: startTransfer,
		},
		{
			name: "an accepting replica is never truncated, it is transferred",
			in:   startInput{Cursor: cursor{LogID: "L", Epoch: 2, Seq: 80}, Accept: true, Start: &transport.Start{LogID: "L", Epoch: 3, HeadSeq: 90, Epochs: hist}},
			want: startTransfer,
		},
		{
			name: "a resume of the replica's history",
			in:   startInput{Cursor: held, Start: &transport.Start{LogID: "L", Epoch: 2, HeadSeq: 60, Resume: true}},
			want: startResume,
		},
		{
			name: "an accepting replica takes a resume",
			in:   startInput{Cursor: held, Accept: true, Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 60, Resume: true}},
			want: startResume,
		},
		{
			name:    "a resume of another history is refused",
			in:      startInput{Cursor: held, Start: &transport.Start{LogID: "M", Epoch: 2, HeadSeq: 60, Resume: true}},
			want:    startRefused,
			wantErr: transport.ErrBadRequest,
		},
		{
			name:    "a resume offered to a replica with no copy is refused",
			in:      startInput{Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 5, Resume: true}},
			want:    startRefused,
			wantErr: transport.ErrBadRequest,
		},
		{
			name: "a replica with no copy is transferred",
			in:   startInput{Start: &transport.Start{LogID: "L", Epoch: 1, HeadSeq: 5}},
			want: startTransfer,
		},
		{
			name: "a replica with no copy is transferred an empty table",
			in:   startInput{Start: &transport.Start{LogID: "L", Epoch: math.MaxUint64}},
			want: startTransfer,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decideStart(tt.in)
			if got.Action != tt.want {
				t.Fatalf("action = %s, want %s (err %v)", got.Action, tt.want, got.Err)
			}
			if got.EpochEnd != tt.wantEnd {
				t.Errorf("epoch end = %d, want %d", got.EpochEnd, tt.wantEnd)
			}
			switch {
			case tt.wantErr == nil && got.Err != nil:
				t.Errorf("err = %v, want none", got.Err)
			case tt.wantErr != nil && !errors.Is(got.Err, tt.wantErr):
				t.Errorf("err = %v, want %v", got.Err, tt.wantErr)
			case tt.wantText != "" && got.Err.Error() != tt.wantText:
				t.Errorf("err = %q, want %q", got.Err, tt.wantText)
			}
		})
	}
}
