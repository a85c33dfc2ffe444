package main

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
)

// hostile is what a hostile registration puts into every name, address,
// state, reason, key, value and error of fakeDeployment: ESC opening an
// OSC sequence (set the window title) ended by BEL, CR (go back over the
// line), backspace, DEL, a C1 CSI and a right-to-left override.
const hostile = "\x1b]0;owned\a\r\b\x7f\u009b\u202e"

// rawControls lists the runes of s a terminal could act on: control
// characters but the newline, format characters, and bytes that are not
// UTF-8.
func rawControls(s string) []string {
	var bad []string
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			bad = append(bad, fmt.Sprintf("byte %#x at %d", s[i], i))
		case r == '\n':
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			bad = append(bad, fmt.Sprintf("%U at %d", r, i))
		}
		i += n
	}
	return bad
}

// Every command (status, tables, consumers, get, keys, tail, verify, mode
// list and set, and the errors they end with), in text and in JSON, writes
// no control or format character that came from the registry or an owner:
// text shows them as Go escapes.
func TestOutput_NoRawControlBytes(t *testing.T) {
	br := fakeDeployment(t, hostile)
	cmds := append(everyCommand(),
		[]string{"get", "stores/managers", "k2" + hostile}, // a key and value with them
		[]string{"get", "stores/managers" + hostile, "k1"}, // an error naming the table
		[]string{"verify", "-wait", "0s", "stores/nosuch"}, // an error from the owner
		[]string{"keys", "stores/managers" + hostile},      // an error naming the table
	)
	for _, args := range cmds {
		for _, output := range []string{"text", "json"} {
			t.Run(output+" "+strings.Join(args, " "), func(t *testing.T) {
				r := runCtl(t, append([]string{br, "-o", output}, args...)...)
				if r.code == exitUsage {
					t.Fatalf("%v", r)
				}
				for name, s := range map[string]string{"stdout": r.stdout, "stderr": r.stderr} {
					if bad := rawControls(s); len(bad) > 0 {
						t.Errorf("%s carries %s:\n%q", name, strings.Join(bad, ", "), s)
					}
				}
				if args[0] == "mode" && args[1] == "set" {
					return // prints only what was asked, nothing registered
				}
				all := r.stdout + r.stderr
				if !strings.Contains(all, "owned") {
					t.Errorf("the output shows nothing registered:\n%s", all)
				}
				escaped := `\x1b]0;owned\a\r\b\x7f\u009b\u202e`
				if output == "text" && !strings.Contains(all, escaped) {
					t.Errorf("the text does not show %s:\n%s", escaped, all)
				}
			})
		}
	}
}

// An unreachable broker whose address carries the hostile runes: the
// error escapes it.
func TestOutput_ErrorsEscaped(t *testing.T) {
	r := runCtl(t, "-broker=127.0.0.1:1"+hostile, "-timeout", "2s", "status")
	if r.code == exitOK {
		t.Fatalf("status against no broker succeeded: %v", r)
	}
	if bad := rawControls(r.stdout + r.stderr); len(bad) > 0 {
		t.Fatalf("the error carries %s:\n%q", strings.Join(bad, ", "), r.stderr)
	}
}

// textf escapes every argument but numbers and booleans, whatever its
// type and verb.
func TestTextf(t *testing.T) {
	type pair struct{ A, B string }
	tests := []struct {
		name   string
		format string
		arg    any
		want   string
	}{
		{"string", "%s", "a\x1bb", `a\x1bb`},
		{"error", "%v", errors.New("e\a"), `e\a`},
		{"stringer", "%s", 1500 * time.Millisecond, "1.5s"},
		{"slice", "%v", []string{"a\r", "b"}, `[a\r b]`},
		{"struct", "%v", pair{"\x1b", "ok"}, `{\x1b ok}`},
		{"bytes", "%s", []byte("v\x7f"), `[118 127]`},
		{"int", "%d", 42, "42"},
		{"uint64 hex", "%x", uint64(255), "ff"},
		{"bool", "%v", true, "true"},
		{"float", "%.1f", 2.25, "2.2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := textf(&b, tc.format, tc.arg); err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != tc.want {
				t.Fatalf("textf(%q, %#v) = %q, want %q", tc.format, tc.arg, got, tc.want)
			}
		})
	}
}

// replctl writes its output only through render.go's textf, table,
// writeJSON, writeJSONLine and writeRaw: no other file of the command
// calls fmt's printing functions, io.WriteString or io.Copy, writes to
// stdout or stderr directly, or makes a JSON encoder on them. A new
// command that prints another way fails here, before it can print a
// registration raw.
func TestOutput_OnePath(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	mentionsOutput := func(e ast.Expr) bool {
		s := types.ExprString(e)
		return strings.Contains(s, "stdout") || strings.Contains(s, "stderr") || strings.Contains(s, "os.Std")
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "render.go" {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pkg := ""
			if id, ok := sel.X.(*ast.Ident); ok {
				pkg = id.Name
			}
			fn := sel.Sel.Name
			bad := false
			switch {
			case pkg == "fmt" && (strings.HasPrefix(fn, "Print") || strings.HasPrefix(fn, "Fprint")):
				bad = true
			case pkg == "io" && (fn == "WriteString" || fn == "Copy"):
				bad = true
			case pkg == "json" && fn == "NewEncoder":
				bad = len(call.Args) == 1 && mentionsOutput(call.Args[0])
			case fn == "Write" || fn == "WriteString" || fn == "WriteByte" || fn == "WriteRune":
				bad = mentionsOutput(sel.X)
			}
			if bad {
				t.Errorf("%s: %s writes output past textf/table/writeJSON/writeRaw (render.go)", fset.Position(call.Pos()), types.ExprString(call.Fun))
			}
			return true
		})
	}
}
