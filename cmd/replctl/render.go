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
	"unicode/utf8"
)

// cmdFlags returns the flag set of one command: the common flags plus the
// ones the caller adds.
func (c *cli) cmdFlags(name, args string) *flag.FlagSet {
	fs := c.flagSet("replctl " + name)
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "usage: replctl %s [flags] %s\n\nflags:\n", name, args)
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

func (t *table) row(cols ...string) {
	for i, c := range cols {
		if c == "" {
			cols[i] = "-"
		}
	}
	fmt.Fprintln(t.tw, strings.Join(cols, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// writeJSON writes v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
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
