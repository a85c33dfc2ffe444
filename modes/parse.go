package modes

import (
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
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
	p := &parser{
		v:       validator{file: file, pos: make(map[string]position)},
		what:    "config",
		version: Version,
		keys:    []string{"version", "defaults", "tables"},
		aliases: true,
	}
	doc, ok := p.decode(b)
	if !ok {
		return nil, p.v.err()
	}
	c := &Config{}
	p.config(doc, c)
	c.validate(&p.v, false) // the version was checked while walking
	if err := p.v.err(); err != nil {
		return nil, err
	}
	return c, nil
}

func (p *parser) config(doc *yaml.Node, c *Config) {
	c.Version = p.document(doc, func(k, v *yaml.Node) {
		switch k.Value {
		case "defaults":
			p.table(v, "defaults", &c.Defaults)
		case "tables":
			for _, tf := range p.fields(v, "tables") {
				name := tf.k.Value
				key := childKey("tables", name)
				p.mark(key, tf.k)
				var t TableConfig
				p.table(deref(tf.v), key, &t)
				if c.Tables == nil {
					c.Tables = make(map[string]TableConfig)
				}
				c.Tables[name] = t
			}
		}
	})
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
