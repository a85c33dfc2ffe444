package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// cmdFlags returns the flag set of one command: the common flags plus the
// ones the caller adds.
func (c *cli) cmdFlags(name, args string) *flag.FlagSet {
	fs := c.flagSet("replctl " + name)
	fs.Usage = func() {
		textf(c.stderr, "usage: replctl %s [flags] %s\n\nflags:\n", name, args)
		fs.PrintDefaults()
	}
	return fs
}

// table writes aligned columns.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

// row writes one row; every cell goes through escape.
func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			c = "-"
		}
		cols[i] = escape(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON writes v as indented JSON followed by a newline (see
// jsonSafe).
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(jsonSafe(b), '\n'))
	return err
}

// writeJSONLine writes v as JSON on one line (see jsonSafe).
func writeJSONLine(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(jsonSafe(b), '\n'))
	return err
}

// escape makes s safe to print on a terminal: every rune that is not
// printable (ESC, BEL, other control characters, line breaks, tabs,
// bidirectional and other format characters) becomes its Go escape
// (\x1b, \a, \n, \t, \u202e) and every byte that is not UTF-8 becomes \xNN;
// the rest is kept as it is. Every piece of text replctl prints that it did
// not write itself (names, addresses, states and errors from the registry
// and from owners, keys, values) goes through it: table cells (table.row),
// formatted lines (textf) and the final error message (run).
func escape(s string) string {
	if printable(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r):
			b.WriteString(s[i : i+n])
		default:
			q := strconv.QuoteRune(r) // '\x1b', '\a', '\u202e'
			b.WriteString(q[1 : len(q)-1])
		}
		i += n
	}
	return b.String()
}

// printable reports whether s is valid UTF-8 made of printable runes only
// (the ASCII space is printable; other blanks are not).
func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false // (a real U+FFFD takes the slow path too)
		}
	}
	return true
}

// textf writes formatted text, and is with table, writeJSON,
// writeJSONLine and writeRaw the only way replctl writes to its output
// (TestOutput_OnePath keeps it so): every argument but numbers and
// booleans goes through escape first, strings, errors, Stringers and
// anything else (%v of a slice or struct) alike; the format itself is
// replctl's own. It returns the write's error.
func textf(w io.Writer, format string, args ...any) error {
	safe := make([]any, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case string:
			safe[i] = escape(v)
		case error:
			safe[i] = escape(v.Error())
		case fmt.Stringer:
			safe[i] = escape(v.String())
		case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64, float32, float64, bool:
			safe[i] = a
		default:
			safe[i] = escape(fmt.Sprint(a))
		}
	}
	_, err := fmt.Fprintf(w, format, safe...)
	return err
}

// writeRaw writes b as it is, for get -raw, whose point is the stored
// bytes (into a file or a pipe). On a terminal they are escaped as text is,
// so that a value cannot drive it: redirect the output for the bytes
// themselves.
func writeRaw(w io.Writer, b []byte) error {
	if isTerminal(w) {
		return textf(w, "%s", string(b))
	}
	_, err := w.Write(b)
	return err
}

// jsonSafe rewrites the runes of JSON text b that a terminal could act on
// and encoding/json leaves as they are (DEL, C1 controls, format
// characters such as U+202E) as \uXXXX escapes, so that -o json output is
// as safe to print as text. Such runes can only stand inside strings
// (encoding/json writes no other whitespace than space and newline), where
// the escape means the same rune: the document is unchanged.
func jsonSafe(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == '\n' || (r != utf8.RuneError || n > 1) && unicode.IsPrint(r) {
			if out != nil {
				out = append(out, b[i:i+n]...)
			}
		} else {
			if out == nil {
				out = append(make([]byte, 0, len(b)+16), b[:i]...)
			}
			// encoding/json writes valid UTF-8 only, so r is a real rune.
			for _, u := range utf16.Encode([]rune{r}) {
				out = fmt.Appendf(out, `\u%04x`, u)
			}
		}
		i += n
	}
	if out == nil {
		return b
	}
	return out
}

// showBytes renders a key or value for a human: plain when it is printable
// text without blanks, Go-quoted when it is other valid UTF-8, and 0x-hex
// otherwise (or always, with asHex).
func showBytes(b []byte, asHex bool) string {
	if asHex {
		return "0x" + hex.EncodeToString(b)
	}
	if len(b) == 0 {
		return `""`
	}
	if !utf8.Valid(b) {
		return "0x" + hex.EncodeToString(b)
	}
	s := string(b)
	plain := true
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' {
			plain = false
			break
		}
	}
	if plain && !strings.HasPrefix(s, "0x") {
		return s
	}
	return strconv.Quote(s)
}

// textOrNil returns b as a string when it is valid UTF-8 (for the "key" and
// "value" JSON fields), else nil.
func textOrNil(b []byte) *string {
	if !utf8.Valid(b) {
		return nil
	}
	s := string(b)
	return &s
}

// age renders how long ago unix-ms ms was, relative to now.
func age(now time.Time, ms int64) string {
	if ms <= 0 {
		return "never"
	}
	return duration(now.Sub(time.UnixMilli(ms))) + " ago"
}

// duration renders d compactly: 850ms, 4.2s, 3m10s.
func duration(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return d.Round(time.Second).String()
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }
