package modes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
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
	pp := &policyParser{file: file, p: NewAccessPolicy()}
	if len(b) > maxPolicySize {
		pp.add(nil, "", "the file is %d bytes, at most %d", len(b), maxPolicySize)
		return nil, pp.err()
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			pp.add(nil, "", "empty policy (want at least `version: %d`)", AccessPolicyVersion)
		} else {
			pp.syntax(err)
		}
		return nil, pp.err()
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		pp.add(&extra, "", "more than one YAML document")
		return nil, pp.err()
	} else if !errors.Is(err, io.EOF) {
		pp.syntax(err)
		return nil, pp.err()
	}
	pp.document(&doc)
	if err := pp.err(); err != nil {
		return nil, err
	}
	return pp.p, nil
}

type policyParser struct {
	file string
	p    *AccessPolicy
	errs []*Error
}

func (pp *policyParser) add(n *yaml.Node, key, format string, args ...any) {
	e := &Error{File: pp.file, Key: key, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	pp.errs = append(pp.errs, e)
}

var policyYAMLLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (pp *policyParser) syntax(err error) {
	msg := err.Error()
	e := &Error{File: pp.file}
	if m := policyYAMLLineRE.FindStringSubmatch(msg); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	e.Msg = "YAML syntax: " + msg
	pp.errs = append(pp.errs, e)
}

func (pp *policyParser) err() error {
	if len(pp.errs) == 0 {
		return nil
	}
	sort.SliceStable(pp.errs, func(i, j int) bool {
		a, b := pp.errs[i], pp.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	errs := make([]error, len(pp.errs))
	for i, e := range pp.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

func policyKind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// noAlias reports an anchor or alias on n: a policy is short and explicit,
// and aliases would let a small file expand into a large one.
func (pp *policyParser) noAlias(n *yaml.Node, key string) bool {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		pp.add(n, key, "anchors and aliases are not allowed in a policy file")
		return false
	}
	return true
}

// mapping returns the key/value pairs of a mapping, reporting duplicate
// and non-string keys; a null node is an empty mapping.
func (pp *policyParser) mapping(n *yaml.Node, key string) [][2]*yaml.Node {
	if !pp.noAlias(n, key) {
		return nil
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		pp.add(n, key, "want a mapping, got %s", policyKind(n))
		return nil
	}
	var out [][2]*yaml.Node
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !pp.noAlias(k, key) {
			continue
		}
		if k.Kind != yaml.ScalarNode || k.ShortTag() == "!!null" || k.ShortTag() == "!!merge" {
			pp.add(k, key, "keys must be strings, got %s", policyKind(k))
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			pp.add(k, joinKey(key, k.Value), "duplicate key %q (first at line %d)", k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, [2]*yaml.Node{k, v})
	}
	return out
}

func joinKey(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func (pp *policyParser) document(doc *yaml.Node) {
	root := doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	if root.Kind != yaml.MappingNode {
		pp.add(root, "", "want a mapping with version, tables and limits, got %s", policyKind(root))
		return
	}
	hasVersion := false
	for _, f := range pp.mapping(root, "") {
		k, v := f[0], f[1]
		switch k.Value {
		case "version":
			hasVersion = true
			if n, ok := pp.integer(v, "version"); ok && n != AccessPolicyVersion {
				pp.add(v, "version", "unsupported version %d (want %d)", n, AccessPolicyVersion)
			}
		case "tables":
			for _, tf := range pp.mapping(v, "tables") {
				pp.table(tf[0], tf[1])
			}
		case "limits":
			for _, lf := range pp.mapping(v, "limits") {
				pp.limit(lf[0], lf[1])
			}
		default:
			pp.add(k, k.Value, "unknown key %q (known keys: version, tables, limits)", k.Value)
		}
	}
	if !hasVersion {
		pp.add(root, "version", "missing (want `version: %d` at the top)", AccessPolicyVersion)
	}
}

// table parses one tables entry: "SERVICE/TABLE: {readers: [...]}".
func (pp *policyParser) table(k, v *yaml.Node) {
	key := "tables[" + k.Value + "]"
	owner, table, ok := strings.Cut(k.Value, "/")
	if !ok {
		pp.add(k, key, "want SERVICE/TABLE (or SERVICE/*)")
		return
	}
	nameOK := true
	if err := transport.CheckIdentityName("service", owner); err != nil {
		pp.add(k, key, "%v", err)
		nameOK = false
	}
	if table != AnyTable {
		if err := transport.CheckIdentityName("table", table); err != nil {
			pp.add(k, key, "%v", err)
			nameOK = false
		}
	}
	var readers []string
	hasReaders := false
	for _, f := range pp.mapping(v, key) {
		fk, fv := f[0], f[1]
		switch fk.Value {
		case "readers":
			hasReaders = true
			readers = pp.names(fv, key+".readers")
		default:
			pp.add(fk, joinKey(key, fk.Value), "unknown key %q (known keys: readers)", fk.Value)
		}
	}
	if !hasReaders {
		pp.add(k, key, "no readers (write `readers: []` to list none)")
	}
	if nameOK {
		// The names were checked: Allow cannot fail. An entry with no
		// readers is kept, so that Summary counts it.
		if err := pp.p.Allow(owner, table, readers...); err != nil {
			pp.add(k, key, "%v", err)
		}
	}
}

// names parses a list of service names, reporting bad and repeated ones.
func (pp *policyParser) names(n *yaml.Node, key string) []string {
	if !pp.noAlias(n, key) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		pp.add(n, key, "want a list of service names, got %s", policyKind(n))
		return nil
	}
	var out []string
	seen := map[string]int{}
	for _, e := range n.Content {
		if !pp.noAlias(e, key) {
			continue
		}
		if e.Kind != yaml.ScalarNode || e.ShortTag() != "!!str" {
			pp.add(e, key, "want a service name, got %s", policyKind(e))
			continue
		}
		if err := transport.CheckIdentityName("service", e.Value); err != nil {
			pp.add(e, key, "%v", err)
			continue
		}
		if line, dup := seen[e.Value]; dup {
			pp.add(e, key, "service %q listed twice (first at line %d)", e.Value, line)
			continue
		}
		seen[e.Value] = e.Line
		out = append(out, e.Value)
	}
	return out
}

// limit parses one limits entry: "SERVICE: {registrations: N, ...}".
func (pp *policyParser) limit(k, v *yaml.Node) {
	key := "limits[" + k.Value + "]"
	nameOK := true
	if err := transport.CheckIdentityName("service", k.Value); err != nil {
		pp.add(k, key, "%v", err)
		nameOK = false
	}
	var l Limits
	for _, f := range pp.mapping(v, key) {
		fk, fv := f[0], f[1]
		var dst *int
		switch fk.Value {
		case "registrations":
			dst = &l.Registrations
		case "tables":
			dst = &l.Tables
		case "subscriptions":
			dst = &l.Subscriptions
		default:
			pp.add(fk, joinKey(key, fk.Value), "unknown key %q (known keys: registrations, tables, subscriptions)", fk.Value)
			continue
		}
		if n, ok := pp.integer(fv, joinKey(key, fk.Value)); ok {
			if n < 0 || n > 1<<30 {
				pp.add(fv, joinKey(key, fk.Value), "must be 0 (the broker's default) to %d, got %d", 1<<30, n)
				continue
			}
			*dst = int(n)
		}
	}
	if nameOK {
		if err := pp.p.SetLimits(k.Value, l); err != nil {
			pp.add(k, key, "%v", err)
		}
	}
}

func (pp *policyParser) integer(n *yaml.Node, key string) (int64, bool) {
	if !pp.noAlias(n, key) {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		pp.add(n, key, "want an integer, got %s", policyKind(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		pp.add(n, key, "want an integer, got %q", n.Value)
		return 0, false
	}
	return v, true
}
