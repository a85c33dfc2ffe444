// Package depcheck keeps the import graph of the module as docs/design.md
// ("Packages and import rules") draws it, so that the house cannot drift.
// Its test lists every package of the module with `go list -json` (a new
// package is checked the day it appears) and fails naming each import that
// breaks a rule, and each package that fits no layer.
//
// The layers, from the bottom:
//
//   - helpers: internal/... (but the suites and shared libraries below). They import only other
//     helpers.
//   - bottom: transport, then modes. They import nothing of ours but
//     helpers, except that modes may use transport (its name rule); transport
//     never imports modes.
//   - middle: replica, broker. They import the bottom and helpers, and
//     never each other (they meet only through transport).
//   - top: cmd/<name>, examples/<name>, chaos, and the test suites
//     internal/integration and internal/depcheck. Each is a tree of its
//     own: it imports anything below, and of the top only its own tree, so
//     nothing imports cmd or examples (the marketplace's authorization
//     benchmark lives in examples/marketplace for that reason). The one
//     exception is a shared library of the top (internal/benchkit, what
//     the benchmark commands have in common): it sits in the top, so it
//     may import anything below, and any tree of the top may import it.
//
// An import always runs down (or within one package's own tree): never up,
// never across one layer. internal/... is imported only from inside the
// module (the go tool enforces it too). Test imports count as imports.
//
// Of the third-party modules, badger is reached only through replica and
// broker (its raft log) and memberlist only through broker: no helper,
// bottom or middle package but replica and broker imports badger, directly
// or through its dependencies, and none but broker memberlist. The top is free (cmd/replbroker fills in a
// memberlist.Config).
package depcheck

import (
	"fmt"
	"slices"
	"strings"
)

// Layer is a package's place in the import graph.
type Layer int

// The layers, from the bottom.
const (
	NoLayer Layer = iota // fits no layer: a violation in itself
	Helper               // internal/... but the suites and shared libraries
	Bottom               // transport, modes
	Middle               // replica, broker
	Top                  // cmd/..., examples/..., chaos/..., the suites, shared libraries
)

func (l Layer) String() string {
	return [...]string{"no layer", "helper", "bottom", "middle", "top"}[l]
}

// suites are the internal packages that hold test suites: top, not
// helpers.
var suites = []string{"internal/integration", "internal/depcheck"}

// shared are the internal packages that are libraries of the top: they
// import anything below, and any tree of the top may import them.
var shared = []string{"internal/benchkit"}

// owned maps a third-party module to the packages that may reach it
// below the top.
var owned = map[string][]string{
	"github.com/dgraph-io/badger":     {"replica", "broker"}, // broker: its raft log (broker/raftstore.go)
	"github.com/hashicorp/memberlist": {"broker"},
}

// ownerNames names the owners of a module for a message: "replica" or
// "replica and broker".
func ownerNames(owners []string) string { return strings.Join(owners, " and ") }

// Place returns the layer of a package, given by its path inside the
// module ("replica", "cmd/replctl/x"), and its tree: the unit whose
// packages may import one another ("replica", "cmd/replctl",
// "examples/marketplace", "chaos").
func Place(rel string) (Layer, string) {
	first, rest, _ := strings.Cut(rel, "/")
	second, _, _ := strings.Cut(rest, "/")
	switch first {
	case "transport", "modes":
		return Bottom, first
	case "replica", "broker":
		return Middle, first
	case "chaos":
		return Top, first
	case "cmd", "examples":
		if second == "" {
			return NoLayer, rel
		}
		return Top, first + "/" + second
	case "internal":
		if second == "" {
			return NoLayer, rel
		}
		tree := first + "/" + second
		if slices.Contains(suites, tree) || slices.Contains(shared, tree) {
			return Top, tree
		}
		return Helper, tree
	}
	return NoLayer, rel
}

// Package is one package of the graph.
type Package struct {
	Path    string   // import path
	Imports []string // direct imports, of the package and of its tests
	Deps    []string // everything the package (not its tests) depends on
}

// Check returns the violations of the rules in the graph pkgs of module
// mod, one sentence each, naming the packages.
func Check(mod string, pkgs []Package) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	rel := func(p string) (string, bool) {
		if p == mod {
			return "", true
		}
		r, ok := strings.CutPrefix(p, mod+"/")
		return r, ok
	}
	for _, p := range pkgs {
		from, inside := rel(p.Path)
		if !inside {
			for _, imp := range p.Imports {
				if r, ok := rel(imp); ok && (r == "internal" || strings.HasPrefix(r, "internal/")) {
					bad("%s imports %s: internal packages are for the module only", p.Path, imp)
				}
			}
			continue
		}
		fl, ft := Place(from)
		if fl == NoLayer {
			bad("%s fits no layer: place it in depcheck.Place and docs/design.md", p.Path)
			continue
		}
		for _, imp := range p.Imports {
			to, ok := rel(imp)
			if !ok {
				for m, owners := range owned {
					if (imp == m || strings.HasPrefix(imp, m+"/")) && fl != Top && !slices.Contains(owners, ft) {
						bad("%s imports %s: only %s does, below the top", from, imp, ownerNames(owners))
					}
				}
				continue
			}
			tl, tt := Place(to)
			switch {
			case tt == ft:
				// within one tree
			case tl == NoLayer:
				bad("%s imports %s, which fits no layer", from, to)
			case tl > fl:
				bad("%s (%s) imports %s (%s): imports run down, never up", from, fl, to, tl)
			case tl < fl:
				// down
			case fl == Top && slices.Contains(shared, tt):
				// a shared library of the top
			case fl == Helper:
				// helpers import one another
			case fl == Middle:
				bad("%s imports %s: replica and broker never import each other", from, to)
			case fl == Bottom && ft == "modes" && tt == "transport":
				// modes sits on transport (one name rule)
			case fl == Bottom:
				bad("%s imports %s: the bottom packages import nothing of ours but helpers", from, to)
			default:
				bad("%s imports %s: nothing imports another tree of cmd, examples or chaos", from, to)
			}
		}
		if fl == Top {
			continue
		}
		for m, owners := range owned {
			if slices.Contains(owners, ft) {
				continue
			}
			for _, d := range p.Deps {
				if d == m || strings.HasPrefix(d, m+"/") {
					bad("%s depends on %s: only %s does, below the top", from, d, ownerNames(owners))
					break
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
