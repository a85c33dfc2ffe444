package chaos

import (
	"strings"
	"testing"
)

// excuseDiskLoss marks exactly the acknowledged writes of an older epoch
// than the restored owner's beyond the restored seq as lost by the fault;
// the rest stay acknowledged and are checked.
func TestExcuseDiskLoss(t *testing.T) {
	points := []restorePoint{
		{owner: "o1", restored: Restored{Seq: 100, NewEpoch: 5}, lostHead: 120},
		{owner: "o2", restored: Restored{Seq: 300, NewEpoch: 9}, lostHead: 320},
	}
	tests := []struct {
		name      string
		o         op
		lost      bool
		held      bool
		unchanged string // the class the op keeps when not lost
	}{
		{"held by the replica", op{class: ClassOK, seq: 100, epoch: 4}, false, true, ClassOK},
		{"beyond the restored seq, older epoch", op{class: ClassOK, seq: 101, epoch: 4}, true, false, ""},
		{"after the first restore", op{class: ClassOK, seq: 101, epoch: 5}, false, true, ClassOK},
		{"lost by the second disk loss", op{class: ClassOK, seq: 310, epoch: 7}, true, false, ""},
		{"after the second restore", op{class: ClassOK, seq: 310, epoch: 9}, false, false, ClassOK},
		{"a failed write is never lost", op{class: ClassFailed, seq: 0, epoch: 4}, false, false, ClassFailed},
		{"an unknown write stays unknown", op{class: ClassUnknown, seq: 110, epoch: 4}, false, false, ClassUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			out, lost, held, note := excuseDiskLoss([]*op{&o}, points)
			if got := out[0].class == classLostByFault; got != tc.lost || (lost == 1) != tc.lost || (held == 1) != tc.held {
				t.Fatalf("class %s, lost %d, held %d; want lost %v held %v", out[0].class, lost, held, tc.lost, tc.held)
			}
			if !tc.lost && out[0].class != tc.unchanged {
				t.Fatalf("class %s, want %s", out[0].class, tc.unchanged)
			}
			if o.class != tc.o.class {
				t.Fatalf("the history's op changed: %s", o.class)
			}
			if !strings.Contains(note, "o1 restored from") || !strings.Contains(note, "lost by the fault") {
				t.Fatalf("note %q", note)
			}
		})
	}
	if out, lost, held, note := excuseDiskLoss([]*op{{class: ClassOK, seq: 7}}, nil); lost != 0 || held != 0 || note != "" || out[0].class != ClassOK {
		t.Fatalf("no disk loss: %d lost, %d held, %q", lost, held, note)
	}
}
