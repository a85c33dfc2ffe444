package modes

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestMode_TextForms(t *testing.T) {
	tests := []struct {
		text    string
		want    Mode
		wantErr string // fragment; "" = no error
	}{
		{"push", Push, ""},
		{"pull", Pull, ""},
		{"auto", Auto, ""},
		{"", Unset, `invalid mode "" (want push, pull or auto)`},
		{"Push", Unset, `invalid mode "Push"`},
		{"PULL", Unset, `invalid mode "PULL"`},
		{" push", Unset, `invalid mode " push"`},
		{"push ", Unset, `invalid mode "push "`},
		{"unset", Unset, `invalid mode "unset"`},
		{"fast", Unset, `invalid mode "fast"`},
		{"1", Unset, `invalid mode "1"`},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			got, err := ParseMode(tt.text)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Fatalf("ParseMode(%q) = %v, %v; want %v, nil", tt.text, got, err, tt.want)
				}
				if s := got.String(); s != tt.text {
					t.Errorf("String() = %q, want %q", s, tt.text)
				}
				b, err := got.MarshalText()
				if err != nil || string(b) != tt.text {
					t.Errorf("MarshalText() = %q, %v; want %q", b, err, tt.text)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseMode(%q) = %v, want an error", tt.text, got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q does not contain %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestMode_StringAndValid(t *testing.T) {
	tests := []struct {
		m     Mode
		str   string
		valid bool
	}{
		{Unset, "unset", false},
		{Push, "push", true},
		{Pull, "pull", true},
		{Auto, "auto", true},
		{Mode(9), "mode(9)", false},
	}
	for _, tt := range tests {
		t.Run(tt.str, func(t *testing.T) {
			if got := tt.m.String(); got != tt.str {
				t.Errorf("Mode(%d).String() = %q, want %q", uint8(tt.m), got, tt.str)
			}
			if got := tt.m.Valid(); got != tt.valid {
				t.Errorf("Mode(%d).Valid() = %v, want %v", uint8(tt.m), got, tt.valid)
			}
		})
	}
	if Unset != 0 {
		t.Errorf("the zero Mode must be Unset")
	}
}

func TestMode_MarshalUnsetAndInvalid(t *testing.T) {
	b, err := Unset.MarshalText()
	if err != nil || len(b) != 0 {
		t.Errorf("Unset.MarshalText() = %q, %v; want empty, nil", b, err)
	}
	var m Mode = Pull
	if err := m.UnmarshalText(nil); err != nil || m != Unset {
		t.Errorf("UnmarshalText(empty) = %v, mode %v; want nil, unset", err, m)
	}
	if _, err := Mode(9).MarshalText(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Mode(9).MarshalText() error = %v, want ErrInvalid", err)
	}
	m = Push
	if err := m.UnmarshalText([]byte("sideways")); err == nil || !strings.Contains(err.Error(), `"sideways"`) {
		t.Errorf("UnmarshalText(sideways) = %v, want an error naming the value", err)
	}
	if m != Push {
		t.Errorf("a failed UnmarshalText changed the mode to %v", m)
	}
}

func TestMode_JSONRoundTrip(t *testing.T) {
	type doc struct {
		A, B, C, D Mode
	}
	in := doc{A: Push, B: Pull, C: Auto, D: Unset}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"A":"push","B":"pull","C":"auto","D":""}`; string(b) != want {
		t.Errorf("json = %s, want %s", b, want)
	}
	var out doc
	if err := json.Unmarshal(b, &out); err != nil || out != in {
		t.Errorf("round trip = %+v, %v; want %+v", out, err, in)
	}
	err = json.Unmarshal([]byte(`{"A":"pushy"}`), &out)
	if err == nil || !strings.Contains(err.Error(), `invalid mode "pushy"`) {
		t.Errorf("bad json mode: err = %v", err)
	}
}

func TestMode_Flags(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var viaVar, viaText Mode
	fs.Var(&viaVar, "mode", "replication mode")
	fs.TextVar(&viaText, "text-mode", Push, "replication mode")
	if err := fs.Parse([]string{"-mode", "pull", "-text-mode=auto"}); err != nil {
		t.Fatal(err)
	}
	if viaVar != Pull || viaText != Auto {
		t.Errorf("flags = %v, %v; want pull, auto", viaVar, viaText)
	}
	if err := fs.Parse([]string{"-mode="}); err != nil || viaVar != Unset {
		t.Errorf("-mode= : %v, mode %v; want nil, unset", err, viaVar)
	}
	err := fs.Parse([]string{"-mode", "sometimes"})
	if err == nil || !strings.Contains(err.Error(), `invalid mode "sometimes"`) {
		t.Errorf("bad flag: err = %v, want one naming the value", err)
	}
}
