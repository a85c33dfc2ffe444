package broker

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/replmesh/replmesh/transport"
)

// The decided state: what the brokers agree on through Raft (raft.go).
// Every broker applies the same committed commands in the same order to
// its fsm, so every fsm holds the same primary grants, mode overrides and
// broker membership. apply reads no clock and depends on no map iteration
// order; snapshots encode the state sorted, so two fsms that applied the
// same log encode to the same bytes.

// cmdKind says what a command does.
//
// ONLY APPEND TO THIS LIST: the numbers are in the brokers' Raft logs.
type cmdKind uint8

// Command kinds.
const (
	cmdInvalid cmdKind = iota
	cmdGrant           // grant a service's primary lease to an instance at a new epoch
	cmdMode            // set or clear (Mode "") a table's mode override
)

// command is one entry of the brokers' Raft log (EntryNormal data).
type command struct {
	Kind cmdKind `msgpack:"k"`
	// ID names the proposal so that the proposing broker can tell its
	// caller the outcome; 0: nobody waits.
	ID uint64 `msgpack:"id,omitempty"`
	// By is the proposing broker's name (for logs).
	By string `msgpack:"by,omitempty"`

	Service  string `msgpack:"svc"`
	Instance string `msgpack:"inst,omitempty"` // cmdGrant: the new primary
	Epoch    uint64 `msgpack:"ep,omitempty"`   // cmdGrant: the new epoch
	// Prev is the epoch of the grant the proposer saw when it decided (0:
	// none): a grant decided on a state that has moved on is refused.
	Prev  uint64 `msgpack:"prev,omitempty"`
	Table string `msgpack:"t,omitempty"`    // cmdMode
	Mode  string `msgpack:"mode,omitempty"` // cmdMode: "" clears
	// HeadSum is the promoted instance's sum of table heads when the
	// leader decided (for the log line only).
	HeadSum uint64 `msgpack:"hs,omitempty"`
}

func encodeCommand(c *command) []byte {
	buf, err := msgpack.Marshal(c)
	if err != nil {
		// A plain struct of strings and numbers: encoding cannot fail.
		panic(fmt.Sprintf("broker: encode command: %v", err))
	}
	return buf
}

func decodeCommand(b []byte) (*command, error) {
	c := new(command)
	if err := msgpack.Unmarshal(b, c); err != nil {
		return nil, fmt.Errorf("decode command: %w", err)
	}
	return c, nil
}

// errRefused is the outcome of a command the state machine refused.
var errRefused = errors.New("broker: refused by the decided state")

// grantEvent is one applied grant, for observers (Broker.Grants).
type grantEvent struct {
	Index    uint64 // Raft log index
	Service  string
	Instance string
	Epoch    uint64
	Previous string // the primary it replaced ("" none)
}

// fsm is the decided state. Not safe for concurrent use: the broker
// guards it with Broker.mu.
type fsm struct {
	applied uint64               // index of the last entry applied
	owners  map[string]*ownerRec // service -> its current grant; its Epoch is the highest ever granted
	modes   map[string]*modeRec  // "service/table" -> override in force
	members map[uint64]transport.RaftMember
}

func newFSM() *fsm {
	return &fsm{
		owners:  make(map[string]*ownerRec),
		modes:   make(map[string]*modeRec),
		members: make(map[uint64]transport.RaftMember),
	}
}

// checkGrant reports why the state refuses c (nil: it accepts it). An
// epoch is granted once, to one instance, ever: a grant must be above
// every epoch recorded for the service, and decided on the current grant
// (Prev).
func (f *fsm) checkGrant(c *command) error {
	if !validName(c.Service) || !validName(c.Instance) {
		return fmt.Errorf("%w: grant of %q to %q: bad name", errRefused, c.Service, c.Instance)
	}
	cur := uint64(0)
	if o := f.owners[c.Service]; o != nil {
		cur = o.Epoch
	}
	if c.Epoch <= cur {
		return fmt.Errorf("%w: grant of %s epoch %d to %s: epoch %d is recorded", errRefused, c.Service, c.Epoch, c.Instance, cur)
	}
	if c.Prev != cur {
		return fmt.Errorf("%w: grant of %s epoch %d to %s was decided on epoch %d, the service is at %d", errRefused, c.Service, c.Epoch, c.Instance, c.Prev, cur)
	}
	return nil
}

// apply applies the command of entry index and returns its outcome (nil,
// or an error wrapping errRefused). It changes nothing when it refuses.
func (f *fsm) apply(index uint64, c *command) (*grantEvent, error) {
	if index <= f.applied {
		return nil, fmt.Errorf("%w: entry %d is already applied (at %d)", errRefused, index, f.applied)
	}
	f.applied = index
	switch c.Kind {
	case cmdGrant:
		if err := f.checkGrant(c); err != nil {
			return nil, err
		}
		ev := &grantEvent{Index: index, Service: c.Service, Instance: c.Instance, Epoch: c.Epoch}
		if o := f.owners[c.Service]; o != nil {
			ev.Previous = o.Primary
		}
		f.owners[c.Service] = &ownerRec{Service: c.Service, Epoch: c.Epoch, Primary: c.Instance}
		return ev, nil
	case cmdMode:
		if !validName(c.Service) || !validName(c.Table) || checkMode("mode", c.Mode) != nil {
			return nil, fmt.Errorf("%w: bad mode override %q/%q %q", errRefused, c.Service, c.Table, c.Mode)
		}
		m := &modeRec{Service: c.Service, Table: c.Table, Mode: c.Mode, Ver: version{Clock: index}}
		if c.Mode == "" {
			delete(f.modes, m.key())
		} else {
			f.modes[m.key()] = m
		}
		return nil, nil
	}
	return nil, fmt.Errorf("%w: unknown command kind %d", errRefused, c.Kind)
}

// skip records that entry index carried no command (an empty entry of a
// new leader, a configuration change).
func (f *fsm) skip(index uint64) {
	f.applied = max(f.applied, index)
}

// addMember and removeMember apply a committed configuration change.
func (f *fsm) addMember(index uint64, m transport.RaftMember) {
	f.skip(index)
	f.members[m.ID] = m
}

func (f *fsm) removeMember(index uint64, id uint64) {
	f.skip(index)
	delete(f.members, id)
}

// memberList returns the members sorted by name, then id.
func (f *fsm) memberList() []transport.RaftMember {
	out := make([]transport.RaftMember, 0, len(f.members))
	for _, m := range f.members {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b transport.RaftMember) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.ID, b.ID))
	})
	return out
}

// memberByName returns the member named name.
func (f *fsm) memberByName(name string) (transport.RaftMember, bool) {
	for _, m := range f.memberList() {
		if m.Name == name {
			return m, true
		}
	}
	return transport.RaftMember{}, false
}

// fsmImage is the whole decided state as a snapshot holds it, sorted.
type fsmImage struct {
	Applied uint64                 `msgpack:"a"`
	Owners  []*ownerRec            `msgpack:"o"`
	Modes   []*modeRec             `msgpack:"m"`
	Members []transport.RaftMember `msgpack:"mem"`
}

// encode returns the state, deterministically encoded.
func (f *fsm) encode() []byte {
	img := fsmImage{Applied: f.applied, Members: f.memberList()}
	for _, o := range f.owners {
		img.Owners = append(img.Owners, o)
	}
	for _, m := range f.modes {
		img.Modes = append(img.Modes, m)
	}
	slices.SortFunc(img.Owners, func(a, b *ownerRec) int { return strings.Compare(a.Service, b.Service) })
	slices.SortFunc(img.Modes, func(a, b *modeRec) int { return strings.Compare(a.key(), b.key()) })
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(&img); err != nil {
		panic(fmt.Sprintf("broker: encode decided state: %v", err))
	}
	return buf.Bytes()
}

// restore replaces the state with a snapshot's. The maps are cleared and
// refilled, not replaced: the registry reads them.
func (f *fsm) restore(b []byte) error {
	var img fsmImage
	if err := msgpack.Unmarshal(b, &img); err != nil {
		return fmt.Errorf("decode decided state: %w", err)
	}
	clear(f.owners)
	clear(f.modes)
	clear(f.members)
	f.applied = img.Applied
	for _, o := range img.Owners {
		if o != nil {
			f.owners[o.Service] = o
		}
	}
	for _, m := range img.Modes {
		if m != nil {
			f.modes[m.key()] = m
		}
	}
	for _, m := range img.Members {
		f.members[m.ID] = m
	}
	return nil
}
