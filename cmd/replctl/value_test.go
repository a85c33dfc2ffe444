package main

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func mustMsgpack(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMsgpackJSON(t *testing.T) {
	type manager struct{ Store, User string }
	nested := []byte{}
	for range maxValueDepth + 2 {
		nested = append(nested, 0x91) // [[[...
	}
	nested = append(nested, 0x01)
	for _, tc := range []struct {
		name string
		in   []byte
		want string // "" = not shown as msgpack
	}{
		{"struct", mustMsgpack(t, manager{"s1", "alice"}), `{"Store":"s1","User":"alice"}`},
		{"int keys", mustMsgpack(t, map[int]string{1: "one"}), `{"1":"one"}`},
		{"bool and nil keys", []byte{0x82, 0xc3, 0x01, 0xc0, 0x02}, `{"true":1,"null":2}`},
		{"array key", []byte{0x81, 0x92, 0x01, 0x02, 0xa1, 'x'}, `{"[1,2]":"x"}`},
		{"binary key", []byte{0x81, 0xc4, 0x02, 0x00, 0xff, 0x01}, `{"0x00ff":1}`},
		{"small int", []byte{0x01}, `1`},
		{"negative", mustMsgpack(t, int64(math.MinInt64)), `-9223372036854775808`},
		{"uint64", mustMsgpack(t, uint64(math.MaxUint64)), `18446744073709551615`},
		{"int16", []byte{0xd1, 0xff, 0x80}, `-128`},
		{"int8 that reads as a letter", []byte{0xd0, 0x9c}, ""}, // U+041C: text
		{"float", mustMsgpack(t, 1.5), `1.5`},
		{"float32", mustMsgpack(t, float32(0.25)), `0.25`},
		{"NaN", mustMsgpack(t, math.NaN()), `"NaN"`},
		{"string", mustMsgpack(t, "héllo <b>"), `"héllo <b>"`},
		{"string with controls", mustMsgpack(t, "a\x1b[31m\a"), `"a\u001b[31m\u0007"`},
		{"not UTF-8 string", []byte{0xa2, 0xff, 0xfe}, `"0xfffe"`},
		{"binary", mustMsgpack(t, []byte{0, 1, 0xff}), `"0x0001ff"`},
		{"list", mustMsgpack(t, []any{nil, true, "x", []int{}}), `[null,true,"x",[]]`},
		{"time", mustMsgpack(t, time.Date(2024, 5, 6, 7, 8, 9, 10, time.UTC)), `"2024-05-06T07:08:09.00000001Z"`},
		{"other extension", []byte{0xd4, 0x05, 0xab}, `{"ext":5,"hex":"ab"}`},
		{"text stays text", []byte("d"), ""}, // a fixint, but printable text
		{"plain text", []byte("hello world"), ""},
		{"empty", []byte{}, ""},
		{"left over", []byte{0x01, 0x02}, ""},
		{"truncated", mustMsgpack(t, manager{"s1", "alice"})[:10], ""},
		{"huge length claim", []byte{0xdb, 0xff, 0xff, 0xff, 0xff, 'x'}, ""},
		{"huge array claim", []byte{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01}, ""},
		{"too deep", nested, ""},
		{"never used code", []byte{0xc1}, ""},
		{"junk", []byte{0x00, 0xff, 0x01}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := msgpackJSON(tc.in)
			if tc.want == "" {
				if ok {
					t.Fatalf("msgpackJSON(%x) = %s, want not msgpack", tc.in, got)
				}
				return
			}
			if !ok || string(got) != tc.want {
				t.Fatalf("msgpackJSON(%x) = %s, %v; want %s", tc.in, got, ok, tc.want)
			}
			if !json.Valid(got) {
				t.Fatalf("msgpackJSON(%x) = %s: not valid JSON", tc.in, got)
			}
		})
	}
}

func TestShowValue(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    []byte
		asHex bool
		want  string
	}{
		{"text", []byte("v3"), false, "v3"},
		{"text with blanks", []byte("hello world"), false, `"hello world"`},
		{"one character", []byte("d"), false, "d"},
		{"text with a newline", []byte("a\nb"), false, `"a\nb"`},
		{"msgpack map", mustMsgpack(t, map[string]int{"n": 1}), false, `{"n":1}`},
		{"msgpack string", mustMsgpack(t, "a b"), false, `"a b"`},
		{"msgpack control byte", []byte{0x01}, false, "1"},
		{"bytes", []byte{0, 0xff, 1}, false, "0x00ff01"},
		{"empty", nil, false, `""`},
		{"hex shows no msgpack", mustMsgpack(t, map[string]int{"n": 1}), true, "0x81a16e01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := showValue(tc.in, tc.asHex); got != tc.want {
				t.Fatalf("showValue(%x, %v) = %s, want %s", tc.in, tc.asHex, got, tc.want)
			}
		})
	}
}

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"with space", "with space"},
		{"héllo wörld ✓", "héllo wörld ✓"},
		{"red\x1b[31mtext", `red\x1b[31mtext`},
		{"bell\a", `bell\a`},
		{"tab\tnew\nline\r", `tab\tnew\nline\r`},
		{"del\x7f", `del\x7f`},
		{"c1\u009b", `c1\u009b`},
		{"bidi\u202eevil", `bidi\u202eevil`},
		{"zero\u200bwidth", `zero\u200bwidth`},
		{"bad\xffutf8", `bad\xffutf8`},
		{"nbsp\u00a0", `nbsp\u00a0`},
		{`already \x1b escaped`, `already \x1b escaped`}, // printable: unchanged
	} {
		t.Run(tc.want, func(t *testing.T) { // the escaped form names the case printably
			if got := escape(tc.in); got != tc.want {
				t.Errorf("escape(%q) = %s, want %s", tc.in, got, tc.want)
			}
			if got := escape(escape(tc.in)); got != escape(tc.in) {
				t.Errorf("escape is not idempotent on %q: %s", tc.in, got)
			}
		})
	}
}

func TestJSONSafe(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    any
		want string
	}{
		{"plain", map[string]string{"k": "héllo"}, `{"k":"héllo"}`},
		{"controls", map[string]string{"k": "\x1b\a\x7f\u009b"}, `{"k":"\u001b\u0007\u007f\u009b"}`},
		{"bidi", []string{"a\u202eb"}, `["a\u202eb"]`},
		{"beyond the BMP", []string{"tag\U000E0041"}, `["tag\udb40\udc41"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			if err := writeJSONLine(&b, tc.v); err != nil {
				t.Fatal(err)
			}
			got := strings.TrimSuffix(b.String(), "\n")
			if got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
			// The document means the same as encoding/json's.
			var a, w any
			orig, _ := json.Marshal(tc.v)
			if json.Unmarshal([]byte(got), &a) != nil || json.Unmarshal(orig, &w) != nil || !jsonEqual(a, w) {
				t.Fatalf("%s does not decode to the value of %s", got, orig)
			}
		})
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
