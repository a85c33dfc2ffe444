package modes

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parser walks the YAML document of one of the package's config files
// (the modes file, the access policy file) and collects every problem as
// an *Error naming its line. What both files share lives here once: one
// document, a mapping at the top with a version and known keys, string
// keys without duplicates, and the node helpers; each file's own keys are
// walked by parse.go and access.go.
type parser struct {
	v validator
	// what names the file in messages: "config" or "policy".
	what string
	// version is the format version the file must declare.
	version int
	// keys are the known top-level keys, "version" first.
	keys []string
	// aliases: anchors, aliases and merge keys work as YAML defines them
	// (the modes file). When false each is an error (the access policy:
	// a short explicit file, where an alias would let a small file expand
	// into a large one).
	aliases bool
}

// decode returns the one YAML document of b; an empty input, a syntax
// error or a second document is recorded, and decode returns false.
func (p *parser) decode(b []byte) (*yaml.Node, bool) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.v.addAt("", position{}, "empty %s (want at least `version: %d`)", p.what, p.version)
		} else {
			p.syntax(err)
		}
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		p.v.addAt("", position{extra.Line, extra.Column}, "more than one YAML document")
		return nil, false
	} else if !errors.Is(err, io.EOF) {
		p.syntax(err)
		return nil, false
	}
	return &doc, true
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// syntax records a YAML syntax error as an *Error with its line.
func (p *parser) syntax(err error) {
	msg := err.Error()
	pos := position{}
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		pos.line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.v.addAt("", pos, "YAML syntax: %s", msg)
}

// document walks the top-level mapping of doc: it checks the version,
// reports unknown keys and a missing version, and hands every other known
// key with its value to field. It returns the version found (0 when it
// is missing or not an integer).
func (p *parser) document(doc *yaml.Node, field func(k, v *yaml.Node)) int {
	root := doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	root = deref(root)
	if root.Kind != yaml.MappingNode {
		last := len(p.keys) - 1
		p.errorf(root, "", "want a mapping with %s and %s, got %s", strings.Join(p.keys[:last], ", "), p.keys[last], kindName(root))
		return 0
	}
	version, hasVersion := 0, false
	for _, f := range p.fields(root, "") {
		name := f.k.Value
		if !slices.Contains(p.keys, name) {
			p.unknown(f.k, "", strings.Join(p.keys, ", "))
			continue
		}
		p.mark(name, f.k)
		v, ok := p.resolve(f.v, name)
		if name == "version" {
			hasVersion = true
			if !ok {
				continue
			}
			n, ok := p.integer(v, "version")
			if ok && n != int64(p.version) {
				p.errorf(v, "version", "unsupported version %d (want %d)", n, p.version)
			}
			version = int(n)
			continue
		}
		if ok {
			field(f.k, v)
		}
	}
	if !hasVersion {
		p.errorf(root, "version", "missing (want `version: %d` at the top)", p.version)
	}
	return version
}

func (p *parser) errorf(n *yaml.Node, key, format string, args ...any) {
	p.v.addAt(key, position{n.Line, n.Column}, format, args...)
}

func (p *parser) mark(key string, n *yaml.Node) {
	p.v.pos[key] = position{n.Line, n.Column}
}

// resolve returns the node n stands for: the aliased node when the file
// allows aliases; otherwise an anchor or alias on n is reported and
// resolve returns false.
func (p *parser) resolve(n *yaml.Node, key string) (*yaml.Node, bool) {
	if p.aliases {
		return deref(n), true
	}
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		p.errorf(n, key, "anchors and aliases are not allowed in a %s file", p.what)
		return n, false
	}
	return n, true
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 64; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

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

// fields returns a mapping's key/value pairs, reporting non-scalar and
// duplicate keys. Where aliases are allowed, merge keys are expanded
// (explicit keys win over merged ones, earlier merge sources over later);
// elsewhere a merge key is reported as a key that is not a string. A null
// node is an empty mapping; anything else that is not a mapping is
// reported.
func (p *parser) fields(n *yaml.Node, key string) []pair {
	return p.fieldsDepth(n, key, 0)
}

func (p *parser) fieldsDepth(n *yaml.Node, key string, depth int) []pair {
	n, ok := p.resolve(n, key)
	if !ok || isNull(n) {
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
		if p.aliases && isMerge(k) {
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
		k, ok := p.resolve(k, key)
		if !ok {
			continue
		}
		if k.Kind != yaml.ScalarNode || isNull(k) || !p.aliases && k.ShortTag() == "!!merge" {
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
// entries (and limits[NAME] for the access policy's limit entries),
// parent.name otherwise.
func childKey(parent, name string) string {
	if parent == "tables" || parent == "limits" {
		return parent + "[" + name + "]"
	}
	return join(parent, name)
}

func (p *parser) unknown(k *yaml.Node, key string, known string) {
	p.errorf(k, join(key, k.Value), "unknown key %q (known keys: %s)", k.Value, known)
}

// scalar returns a scalar's text; it reports null and non-scalars.
func (p *parser) scalar(n *yaml.Node, key string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, key, "want a value, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
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
