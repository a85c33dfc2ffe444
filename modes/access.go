package modes

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/replmesh/replmesh/transport"
)

// AccessPolicyVersion is the access policy file format ParseAccessPolicy
// reads.
const AccessPolicyVersion = 1

// AnyTable in a policy's table name ("stores/*") stands for every table of
// the service.
const AnyTable = "*"

// AccessPolicy says which services may read which tables (Subscribe, Get,
// Digest and Keys on the owner; Lookup and subscriptions on the broker),
// and the limits of each service on the brokers. Authorization is default
// deny: a service reads another service's table only when the policy lists
// it as a reader of that table (or of AnyTable of that service); a service
// always reads its own tables (its standbys do). It is not the auto-mode
// Policy: that one decides push or pull, this one who may read.
//
// Build an AccessPolicy with NewAccessPolicy and Allow / SetLimits, or read
// one with ParseAccessPolicy / LoadAccessPolicy; then share it read-only:
// its methods are safe for concurrent use as long as nobody changes it. A
// nil *AccessPolicy allows each service its own tables only and sets no
// limits.
type AccessPolicy struct {
	readers map[string][]string // "SERVICE/TABLE" or "SERVICE/*" -> sorted reader services
	limits  map[string]Limits   // service -> its limits
}

// Limits are per-service limits a policy sets on the brokers; a zero field
// leaves the broker's default (broker.Config) in force.
type Limits struct {
	// Registrations is how many instances of the service may be registered
	// at once (every instance has an identity of its own, so this bounds
	// the service's identities).
	Registrations int
	// Tables is how many tables one registration may list.
	Tables int
	// Subscriptions is how many subscriptions one registration may list.
	Subscriptions int
}

// NewAccessPolicy returns an empty access policy: every service reads only
// its own tables.
func NewAccessPolicy() *AccessPolicy {
	return &AccessPolicy{readers: map[string][]string{}, limits: map[string]Limits{}}
}

// Allow lets readers read owner's table (AnyTable: every table of owner).
// Readers accumulate over calls. Names must be valid service and table
// names (1-128 characters of A-Z a-z 0-9 _ . -).
func (p *AccessPolicy) Allow(owner, table string, readers ...string) error {
	if err := transport.CheckIdentityName("owner service", owner); err != nil {
		return err
	}
	if table != AnyTable {
		if err := transport.CheckIdentityName("table", table); err != nil {
			return err
		}
	}
	for _, r := range readers {
		if err := transport.CheckIdentityName("reader service", r); err != nil {
			return err
		}
	}
	k := owner + "/" + table
	rs := append(p.readers[k], readers...)
	slices.Sort(rs)
	p.readers[k] = slices.Compact(rs)
	return nil
}

// SetLimits sets the limits of service; negative fields are an error.
func (p *AccessPolicy) SetLimits(service string, l Limits) error {
	if err := transport.CheckIdentityName("service", service); err != nil {
		return err
	}
	if l.Registrations < 0 || l.Tables < 0 || l.Subscriptions < 0 {
		return fmt.Errorf("limits of %s must not be negative: %+v", service, l)
	}
	p.limits[service] = l
	return nil
}

// MayRead reports whether service reader may read table of service owner:
// the owner itself always may; another service when the policy lists it
// for the table or for AnyTable of owner.
func (p *AccessPolicy) MayRead(owner, table, reader string) bool {
	if reader == owner {
		return true
	}
	if p == nil {
		return false
	}
	_, ok := slices.BinarySearch(p.readers[owner+"/"+table], reader)
	if ok {
		return true
	}
	_, ok = slices.BinarySearch(p.readers[owner+"/"+AnyTable], reader)
	return ok
}

// MayReadService reports whether reader may read at least one table of
// owner (what a broker's Lookup of owner needs).
func (p *AccessPolicy) MayReadService(owner, reader string) bool {
	if reader == owner {
		return true
	}
	if p == nil {
		return false
	}
	prefix := owner + "/"
	for k, rs := range p.readers {
		if strings.HasPrefix(k, prefix) {
			if _, ok := slices.BinarySearch(rs, reader); ok {
				return true
			}
		}
	}
	return false
}

// Readers returns the services the policy lists as readers of owner's
// table, AnyTable entries included, sorted; the owner is not listed.
func (p *AccessPolicy) Readers(owner, table string) []string {
	if p == nil {
		return nil
	}
	rs := slices.Concat(p.readers[owner+"/"+table], p.readers[owner+"/"+AnyTable])
	slices.Sort(rs)
	return slices.Compact(rs)
}

// Limits returns the limits the policy sets for service, and whether it
// sets any.
func (p *AccessPolicy) Limits(service string) (Limits, bool) {
	if p == nil {
		return Limits{}, false
	}
	l, ok := p.limits[service]
	return l, ok
}

// Summary returns how many table entries and limit entries p holds (for
// logs).
func (p *AccessPolicy) Summary() (tables, limits int) {
	if p == nil {
		return 0, 0
	}
	return len(p.readers), len(p.limits)
}

// LoadAccessPolicy reads and parses an access policy file (see
// ParseAccessPolicy); errors name the file.
func LoadAccessPolicy(path string) (*AccessPolicy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	return parseAccessPolicy(b, path)
}

// ParseAccessPolicy parses a YAML access policy file:
//
//	version: 1                    # required
//	tables:                       # SERVICE/TABLE (or SERVICE/*): who else may read it
//	  stores/stores: {readers: [products]}
//	  stores/*:
//	    readers: [audit]
//	limits:                       # optional, per service; 0 or absent: the broker's default
//	  products:
//	    registrations: 16         # instances registered at once
//	    tables: 256               # tables per registration
//	    subscriptions: 512        # subscriptions per registration
//
// Parsing is strict: an unknown key, a duplicate key, a value of the wrong
// type, a bad service or table name, an anchor or alias, or another
// version is an error naming its line. Every problem found is returned,
// sorted by line and joined; each is an *Error (as for the modes file:
// file, line, column, key path), wrapping ErrInvalid.
func ParseAccessPolicy(b []byte) (*AccessPolicy, error) { return parseAccessPolicy(b, "") }

// maxPolicySize bounds a policy file: it is read whole.
const maxPolicySize = 4 << 20

func parseAccessPolicy(b []byte, file string) (*AccessPolicy, error) {
	ap := &accessParser{
		parser: parser{
			v:       validator{file: file, pos: make(map[string]position)},
			what:    "policy",
			version: AccessPolicyVersion,
			keys:    []string{"version", "tables", "limits"},
		},
		p: NewAccessPolicy(),
	}
	if len(b) > maxPolicySize {
		ap.v.addAt("", position{}, "the file is %d bytes, at most %d", len(b), maxPolicySize)
		return nil, ap.v.err()
	}
	doc, ok := ap.decode(b)
	if !ok {
		return nil, ap.v.err()
	}
	ap.document(doc, func(k, v *yaml.Node) {
		switch k.Value {
		case "tables":
			for _, f := range ap.fields(v, "tables") {
				ap.table(f.k, f.v)
			}
		case "limits":
			for _, f := range ap.fields(v, "limits") {
				ap.limit(f.k, f.v)
			}
		}
	})
	if err := ap.v.err(); err != nil {
		return nil, err
	}
	return ap.p, nil
}

// accessParser walks an access policy file (the shared parser: no
// anchors or aliases) into p.
type accessParser struct {
	parser
	p *AccessPolicy
}

// table parses one tables entry: "SERVICE/TABLE: {readers: [...]}".
func (ap *accessParser) table(k, v *yaml.Node) {
	key := childKey("tables", k.Value)
	owner, table, ok := strings.Cut(k.Value, "/")
	if !ok {
		ap.errorf(k, key, "want SERVICE/TABLE (or SERVICE/*)")
		return
	}
	nameOK := true
	if err := transport.CheckIdentityName("service", owner); err != nil {
		ap.errorf(k, key, "%v", err)
		nameOK = false
	}
	if table != AnyTable {
		if err := transport.CheckIdentityName("table", table); err != nil {
			ap.errorf(k, key, "%v", err)
			nameOK = false
		}
	}
	var readers []string
	hasReaders := false
	for _, f := range ap.fields(v, key) {
		switch f.k.Value {
		case "readers":
			hasReaders = true
			readers = ap.names(f.v, join(key, "readers"))
		default:
			ap.unknown(f.k, key, "readers")
		}
	}
	if !hasReaders {
		ap.errorf(k, key, "no readers (write `readers: []` to list none)")
	}
	if nameOK {
		// The names were checked: Allow cannot fail. An entry with no
		// readers is kept, so that Summary counts it.
		if err := ap.p.Allow(owner, table, readers...); err != nil {
			ap.errorf(k, key, "%v", err)
		}
	}
}

// names parses a list of service names, reporting bad and repeated ones.
func (ap *accessParser) names(n *yaml.Node, key string) []string {
	n, ok := ap.resolve(n, key)
	if !ok {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		ap.errorf(n, key, "want a list of service names, got %s", kindName(n))
		return nil
	}
	var out []string
	seen := map[string]int{}
	for _, e := range n.Content {
		if _, ok := ap.resolve(e, key); !ok {
			continue
		}
		if e.Kind != yaml.ScalarNode || e.ShortTag() != "!!str" {
			ap.errorf(e, key, "want a service name, got %s", kindName(e))
			continue
		}
		if err := transport.CheckIdentityName("service", e.Value); err != nil {
			ap.errorf(e, key, "%v", err)
			continue
		}
		if line, dup := seen[e.Value]; dup {
			ap.errorf(e, key, "service %q listed twice (first at line %d)", e.Value, line)
			continue
		}
		seen[e.Value] = e.Line
		out = append(out, e.Value)
	}
	return out
}

// limit parses one limits entry: "SERVICE: {registrations: N, ...}".
func (ap *accessParser) limit(k, v *yaml.Node) {
	key := childKey("limits", k.Value)
	nameOK := true
	if err := transport.CheckIdentityName("service", k.Value); err != nil {
		ap.errorf(k, key, "%v", err)
		nameOK = false
	}
	var l Limits
	for _, f := range ap.fields(v, key) {
		var dst *int
		switch f.k.Value {
		case "registrations":
			dst = &l.Registrations
		case "tables":
			dst = &l.Tables
		case "subscriptions":
			dst = &l.Subscriptions
		default:
			ap.unknown(f.k, key, "registrations, tables, subscriptions")
			continue
		}
		fk := join(key, f.k.Value)
		fv, ok := ap.resolve(f.v, fk)
		if !ok {
			continue
		}
		if n, ok := ap.integer(fv, fk); ok {
			if n < 0 || n > 1<<30 {
				ap.errorf(fv, fk, "must be 0 (the broker's default) to %d, got %d", 1<<30, n)
				continue
			}
			*dst = int(n)
		}
	}
	if nameOK {
		if err := ap.p.SetLimits(k.Value, l); err != nil {
			ap.errorf(k, key, "%v", err)
		}
	}
}
