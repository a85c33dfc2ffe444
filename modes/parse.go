package modes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses a config file (see Parse); errors name the file.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load modes config: %w", err)
	}
	return parse(b, path)
}

// Parse parses a YAML config file:
//
//	version: 1                     # required
//	defaults:                      # optional, same keys as a table entry
//	  mode: push
//	tables:                        # optional; keys are SERVICE/TABLE
//	  stores/store_managers:
//	    mode: auto                 # push | pull | auto
//	    pull:
//	      interval: 1s             # Go duration; 0 = on demand only
//	      max_staleness: 5s        # 0 = reads never pull
//	    auto:
//	      ratio: 10                # > 1: to pull above it
//	      low_ratio: 5             # optional, 0 < low_ratio < ratio (default ratio/2): to push below it
//	      window: 10s              # > 0: how long a condition must hold
//	      min_dwell: 30s           # optional, default window: least time between switches
//	    retention:                 # owners only; 0 = unlimited
//	      max_changes: 1000000
//	      max_bytes: 1GiB          # integer bytes or N with B, KiB, MiB, GiB, TiB
//	      max_age: 24h
//
// Parsing is strict: an unknown key, a duplicate key, a value of the wrong
// type or out of range, a bad table name or another version is an error.
// Every problem found is returned (joined); each is an *Error with the
// line, the column and the key path. Anchors, aliases and merge keys
// (<<: *anchor) work as YAML defines them.
func Parse(b []byte) (*Config, error) { return parse(b, "") }

func parse(b []byte, file string) (*Config, error) {
	p := &parser{v: validator{file: file, pos: make(map[string]position)}}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.v.addAt("", position{}, "empty config (want at least `version: %d`)", Version)
			return nil, p.v.err()
		}
		return nil, p.syntaxError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.v.addAt("", position{extra.Line, extra.Column}, "more than one YAML document")
		return nil, p.v.err()
	} else if !errors.Is(err, io.EOF) {
		return nil, p.syntaxError(err)
	}

	c := &Config{}
	p.config(&doc, c)
	c.validate(&p.v, false) // the version was checked while walking
	if err := p.v.err(); err != nil {
		return nil, err
	}
	return c, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntaxError turns a YAML syntax error into an *Error with its line.
func (p *parser) syntaxError(err error) error {
	msg := err.Error()
	pos := position{}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		pos.line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.v.addAt("", pos, "YAML syntax: %s", msg)
	return p.v.err()
}

type parser struct {
	v validator
}

func (p *parser) errorf(n *yaml.Node, key, format string, args ...any) {
	p.v.addAt(key, position{n.Line, n.Column}, format, args...)
}

func (p *parser) mark(key string, n *yaml.Node) {
	p.v.pos[key] = position{n.Line, n.Column}
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 64; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "nothing"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

type pair struct{ k, v *yaml.Node }

// fields returns a mapping's key/value pairs, with merge keys expanded
// (explicit keys win over merged ones, earlier merge sources over later),
// reporting non-scalar and duplicate keys. A null node is an empty
// mapping; anything else that is not a mapping is reported.
func (p *parser) fields(n *yaml.Node, key string) []pair {
	return p.fieldsDepth(n, key, 0)
}

func (p *parser) fieldsDepth(n *yaml.Node, key string, depth int) []pair {
	n = deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, key, "want a mapping, got %s", kindName(n))
		return nil
	}
	if depth > 16 {
		p.errorf(n, key, "merge keys nested too deep")
		return nil
	}
	var out, merged []pair
	seen := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge" {
			src := deref(v)
			if src.Kind == yaml.SequenceNode {
				for _, s := range src.Content {
					merged = append(merged, p.fieldsDepth(s, key, depth+1)...)
				}
			} else {
				merged = append(merged, p.fieldsDepth(src, key, depth+1)...)
			}
			continue
		}
		k = deref(k)
		if k.Kind != yaml.ScalarNode || isNull(k) {
			p.errorf(k, key, "keys must be strings, got %s", kindName(k))
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			p.errorf(k, childKey(key, k.Value), "duplicate key %q (first at line %d)", k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, v})
	}
	for _, m := range merged {
		if _, ok := seen[m.k.Value]; !ok {
			seen[m.k.Value] = m.k
			out = append(out, m)
		}
	}
	return out
}

// childKey is the key path of name under parent: tables[NAME] for table
// entries, parent.name otherwise.
func childKey(parent, name string) string {
	if parent == "tables" {
		return "tables[" + name + "]"
	}
	return join(parent, name)
}

func (p *parser) unknown(k *yaml.Node, key string, known string) {
	p.errorf(k, join(key, k.Value), "unknown key %q (known keys: %s)", k.Value, known)
}

func (p *parser) config(doc *yaml.Node, c *Config) {
	root := doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	root = deref(root)
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", "want a mapping with version, defaults and tables, got %s", kindName(root))
		return
	}
	hasVersion := false
	for _, f := range p.fields(root, "") {
		v := deref(f.v)
		switch f.k.Value {
		case "version":
			hasVersion = true
			p.mark("version", f.k)
			n, ok := p.integer(v, "version")
			if ok && n != Version {
				p.errorf(v, "version", "unsupported version %d (want %d)", n, Version)
			}
			c.Version = int(n)
		case "defaults":
			p.mark("defaults", f.k)
			p.table(v, "defaults", &c.Defaults)
		case "tables":
			p.mark("tables", f.k)
			for _, tf := range p.fields(v, "tables") {
				name := tf.k.Value
				key := "tables[" + name + "]"
				p.mark(key, tf.k)
				var t TableConfig
				p.table(deref(tf.v), key, &t)
				if c.Tables == nil {
					c.Tables = make(map[string]TableConfig)
				}
				c.Tables[name] = t
			}
		default:
			p.unknown(f.k, "", "version, defaults, tables")
		}
	}
	if !hasVersion {
		p.errorf(root, "version", "missing (want `version: %d` at the top)", Version)
	}
}

func (p *parser) table(n *yaml.Node, key string, t *TableConfig) {
	for _, f := range p.fields(n, key) {
		fk := join(key, f.k.Value)
		v := deref(f.v)
		p.mark(fk, f.k)
		switch f.k.Value {
		case "mode":
			if s, ok := p.scalar(v, fk); ok {
				m, err := ParseMode(s)
				if err != nil {
					p.errorf(v, fk, "%v", err)
				}
				t.Mode = m
			}
		case "pull":
			for _, g := range p.fields(v, fk) {
				gk := join(fk, g.k.Value)
				gv := deref(g.v)
				p.mark(gk, g.k)
				switch g.k.Value {
				case "interval":
					t.Pull.Interval = p.duration(gv, gk)
				case "max_staleness":
					t.Pull.MaxStaleness = p.duration(gv, gk)
				default:
					p.unknown(g.k, fk, "interval, max_staleness")
				}
			}
		case "auto":
			for _, g := range p.fields(v, fk) {
				gk := join(fk, g.k.Value)
				gv := deref(g.v)
				p.mark(gk, g.k)
				switch g.k.Value {
				case "ratio":
					t.Auto.Ratio = p.number(gv, gk)
				case "low_ratio":
					t.Auto.LowRatio = p.number(gv, gk)
				case "window":
					t.Auto.Window = p.duration(gv, gk)
				case "min_dwell":
					t.Auto.MinDwell = p.duration(gv, gk)
				default:
					p.unknown(g.k, fk, "ratio, low_ratio, window, min_dwell")
				}
			}
		case "retention":
			for _, g := range p.fields(v, fk) {
				gk := join(fk, g.k.Value)
				gv := deref(g.v)
				p.mark(gk, g.k)
				switch g.k.Value {
				case "max_changes":
					if n, ok := p.integer(gv, gk); ok {
						if n < 0 {
							p.errorf(gv, gk, "must not be negative, got %d", n)
						} else {
							t.Retention.MaxChanges = new(uint64(n))
						}
					}
				case "max_bytes":
					t.Retention.MaxBytes = p.size(gv, gk)
				case "max_age":
					t.Retention.MaxAge = p.duration(gv, gk)
				default:
					p.unknown(g.k, fk, "max_changes, max_bytes, max_age")
				}
			}
		default:
			p.unknown(f.k, key, "mode, pull, auto, retention")
		}
	}
}

// scalar returns a scalar's text; it reports null and non-scalars.
func (p *parser) scalar(n *yaml.Node, key string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, key, "want a value, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) duration(n *yaml.Node, key string) *time.Duration {
	s, ok := p.scalar(n, key)
	if !ok {
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		p.errorf(n, key, "bad duration %q (want a Go duration such as 250ms, 5s or 24h)", s)
		return nil
	}
	return &d // Validate checks the range
}

func (p *parser) number(n *yaml.Node, key string) *float64 {
	s, ok := p.scalar(n, key)
	if !ok {
		return nil
	}
	if t := n.ShortTag(); t != "!!int" && t != "!!float" {
		p.errorf(n, key, "want a number, got %q", s)
		return nil
	}
	var f float64
	if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		p.errorf(n, key, "want a finite number, got %q", s)
		return nil
	}
	return &f
}

func (p *parser) integer(n *yaml.Node, key string) (int64, bool) {
	s, ok := p.scalar(n, key)
	if !ok {
		return 0, false
	}
	var i int64
	if n.ShortTag() != "!!int" || n.Decode(&i) != nil {
		p.errorf(n, key, "want an integer, got %q", s)
		return 0, false
	}
	return i, true
}

var sizeRE = regexp.MustCompile(`^([0-9]+) ?(B|KiB|MiB|GiB|TiB)$`)

var sizeUnits = map[string]int64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

// size reads an integer byte count or an integer with a binary unit.
func (p *parser) size(n *yaml.Node, key string) *int64 {
	s, ok := p.scalar(n, key)
	if !ok {
		return nil
	}
	if n.ShortTag() == "!!int" {
		var i int64
		if err := n.Decode(&i); err != nil {
			p.errorf(n, key, "want a byte count, got %q", s)
			return nil
		}
		return &i // Validate checks the range
	}
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		p.errorf(n, key, "bad size %q (want integer bytes or an integer with B, KiB, MiB, GiB or TiB, e.g. 512MiB)", s)
		return nil
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	unit := sizeUnits[m[2]]
	if err != nil || v > math.MaxInt64/unit {
		p.errorf(n, key, "size %q is too large", s)
		return nil
	}
	v *= unit
	return &v
}
