package modes

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParse_Example(t *testing.T) {
	c, err := Parse(ExampleYAML())
	if err != nil {
		t.Fatalf("Parse(example): %v", err)
	}
	if c.Version != 1 {
		t.Errorf("Version = %d, want 1", c.Version)
	}
	want := &Config{
		Version: 1,
		Defaults: TableConfig{
			Mode: Push,
			Pull: PullConfig{Interval: new(time.Second), MaxStaleness: new(time.Duration(0))},
			Auto: AutoConfig{Ratio: new(10.0), Window: new(10 * time.Second)},
			Retention: RetentionConfig{MaxChanges: new(uint64(1_000_000)), MaxBytes: new(int64(1 << 30)),
				MaxAge: new(24 * time.Hour)},
		},
		Tables: map[string]TableConfig{
			"stores/store_managers": {
				Mode: Auto,
				Pull: PullConfig{Interval: new(time.Second), MaxStaleness: new(5 * time.Second)},
				Auto: AutoConfig{Ratio: new(10.0), LowRatio: new(4.0), Window: new(10 * time.Second),
					MinDwell: new(30 * time.Second)},
			},
			"stores/stores": {
				Mode: Pull,
				Pull: PullConfig{Interval: new(time.Duration(0)), MaxStaleness: new(30 * time.Second)},
				Retention: RetentionConfig{MaxChanges: new(uint64(100_000)), MaxBytes: new(int64(256 << 20)),
					MaxAge: new(6 * time.Hour)},
			},
			"products/products": {Mode: Push},
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Parse(example) =\n%s\nwant\n%s", mustMarshal(t, c), mustMarshal(t, want))
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(example): %v", err)
	}

	// What each service of the example runs with.
	sub, _ := c.Lookup("stores/store_managers")
	s, err := c.Resolve(nil, sub, nil)
	if err != nil {
		t.Fatal(err)
	}
	wantS := Settings{
		Mode:      Auto,
		Pull:      PullSettings{Interval: time.Second, MaxStaleness: 5 * time.Second},
		Auto:      AutoSettings{Ratio: 10, LowRatio: 4, Window: 10 * time.Second, MinDwell: 30 * time.Second},
		Retention: Retention{MaxChanges: 1_000_000, MaxBytes: 1 << 30, MaxAge: 24 * time.Hour},
	}
	if s != wantS {
		t.Errorf("resolved store_managers = %+v, want %+v", s, wantS)
	}
	own, _ := c.Lookup("stores/stores")
	s, err = c.Resolve(nil, nil, own)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Retention{MaxChanges: 100_000, MaxBytes: 256 << 20, MaxAge: 6 * time.Hour}); s.Retention != want {
		t.Errorf("stores/stores retention = %+v, want %+v", s.Retention, want)
	}
	if s.Mode != Pull || s.Pull.Interval != 0 || s.Pull.MaxStaleness != 30*time.Second {
		t.Errorf("stores/stores = %+v, want pull on demand, max staleness 30s", s)
	}
}

func mustMarshal(t *testing.T, c *Config) string {
	t.Helper()
	b, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParse_Valid(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want *Config
	}{
		{"minimal", "version: 1\n", &Config{Version: 1}},
		{"empty sections", "version: 1\ndefaults:\ntables:\n", &Config{Version: 1}},
		{"empty entry and sections", "version: 1\ntables:\n  a/b:\n  c/d: {pull: , auto: {}, retention: ~}\n",
			&Config{Version: 1, Tables: map[string]TableConfig{"a/b": {}, "c/d": {}}}},
		{"on demand pull", "version: 1\ntables:\n  a/b: {mode: pull, pull: {interval: 0}}\n",
			&Config{Version: 1, Tables: map[string]TableConfig{"a/b": {Mode: Pull,
				Pull: PullConfig{Interval: new(time.Duration(0))}}}}},
		{"unlimited retention", "version: 1\ndefaults:\n  retention: {max_changes: 0, max_bytes: 0, max_age: 0s}\n",
			&Config{Version: 1, Defaults: TableConfig{Retention: RetentionConfig{
				MaxChanges: new(uint64(0)), MaxBytes: new(int64(0)), MaxAge: new(time.Duration(0))}}}},
		{"numbers", "version: 1\ndefaults:\n  auto: {ratio: 2.5, low_ratio: 0.5, window: 1m30s, min_dwell: 0s}\n" +
			"  retention: {max_changes: 1_000_000, max_bytes: 512 MiB}\n",
			&Config{Version: 1, Defaults: TableConfig{
				Auto: AutoConfig{Ratio: new(2.5), LowRatio: new(0.5), Window: new(90 * time.Second),
					MinDwell: new(time.Duration(0))},
				Retention: RetentionConfig{MaxChanges: new(uint64(1_000_000)), MaxBytes: new(int64(512 << 20))}}}},
		{"sizes", "version: 1\ntables:\n  a/b: {retention: {max_bytes: 100B}}\n  a/c: {retention: {max_bytes: 2KiB}}\n" +
			"  a/d: {retention: {max_bytes: 3TiB}}\n  a/e: {retention: {max_bytes: 4096}}\n",
			&Config{Version: 1, Tables: map[string]TableConfig{
				"a/b": {Retention: RetentionConfig{MaxBytes: new(int64(100))}},
				"a/c": {Retention: RetentionConfig{MaxBytes: new(int64(2 << 10))}},
				"a/d": {Retention: RetentionConfig{MaxBytes: new(int64(3 << 40))}},
				"a/e": {Retention: RetentionConfig{MaxBytes: new(int64(4096))}}}}},
		{"quoted strings", "version: 1\ndefaults: {mode: \"pull\", pull: {interval: '250ms'}}\n",
			&Config{Version: 1, Defaults: TableConfig{Mode: Pull, Pull: PullConfig{Interval: new(250 * time.Millisecond)}}}},
		{"names", "version: 1\ntables:\n  Svc-1.x/tab_le.v2: {mode: auto}\n",
			&Config{Version: 1, Tables: map[string]TableConfig{"Svc-1.x/tab_le.v2": {Mode: Auto}}}},
		{"anchors, aliases and merge keys", `version: 1
tables:
  a/hot: &hot
    mode: auto
    auto: {ratio: 20, window: 5s}
  a/also-hot: *hot
  a/hot-pull:
    <<: *hot
    mode: pull
`, &Config{Version: 1, Tables: map[string]TableConfig{
			"a/hot":      {Mode: Auto, Auto: AutoConfig{Ratio: new(20.0), Window: new(5 * time.Second)}},
			"a/also-hot": {Mode: Auto, Auto: AutoConfig{Ratio: new(20.0), Window: new(5 * time.Second)}},
			"a/hot-pull": {Mode: Pull, Auto: AutoConfig{Ratio: new(20.0), Window: new(5 * time.Second)}},
		}}},
		{"document marker and comments", "# modes\n---\nversion: 1 # the format\n...\n", &Config{Version: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse =\n%s\nwant\n%s", mustMarshal(t, got), mustMarshal(t, tt.want))
			}
			// Marshal writes what Parse reads back.
			again, err := Parse([]byte(mustMarshal(t, got)))
			if err != nil {
				t.Fatalf("Parse(Marshal): %v", err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Errorf("round trip =\n%s\nwant\n%s", mustMarshal(t, again), mustMarshal(t, got))
			}
		})
	}
}

func TestParse_Invalid(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // fragments of the error, each naming the line (and the key)
	}{
		{"empty file", "", []string{"empty config"}},
		{"only a comment", "# nothing\n", []string{"empty config"}},
		{"root is a list", "- version: 1\n", []string{"line 1: want a mapping with version, defaults and tables, got a list"}},
		{"root is a scalar", "push\n", []string{`line 1: want a mapping with version, defaults and tables, got "push"`}},
		// yaml.v3 reports an unclosed flow collection one line above its
		// opening brace (its context mark is 0-based); the line is yaml's.
		{"syntax error", "version: 1\ntables:\n  a/b: {mode: push\n", []string{"line 2: YAML syntax: did not find expected ',' or '}'"}},
		{"tab indentation", "version: 1\ntables:\n\ta/b: {}\n", []string{"line 3: YAML syntax: "}},
		{"two documents", "version: 1\n---\nversion: 1\n", []string{"line 2: more than one YAML document"}},

		{"version missing", "tables: {}\n", []string{"line 1: version: missing (want `version: 1` at the top)"}},
		{"version mismatch", "version: 2\n", []string{"line 1: version: unsupported version 2 (want 1)"}},
		{"version zero", "version: 0\n", []string{"line 1: version: unsupported version 0 (want 1)"}},
		{"version not a number", "version: one\n", []string{`line 1: version: want an integer, got "one"`}},
		{"version as string", "version: \"1\"\n", []string{`line 1: version: want an integer, got "1"`}},
		{"version float", "version: 1.0\n", []string{`line 1: version: want an integer, got "1.0"`}},

		{"unknown top-level key", "version: 1\nmode: push\n",
			[]string{`line 2: mode: unknown key "mode" (known keys: version, defaults, tables)`}},
		{"misspelt tables", "version: 1\ntabels: {}\n", []string{`line 2: tabels: unknown key "tabels"`}},
		{"unknown table key", "version: 1\ntables:\n  a/b:\n    mode: push\n    interval: 1s\n",
			[]string{`line 5: tables[a/b].interval: unknown key "interval" (known keys: mode, pull, auto, retention)`}},
		{"unknown defaults key", "version: 1\ndefaults:\n  modes: push\n",
			[]string{`line 3: defaults.modes: unknown key "modes"`}},
		{"unknown pull key", "version: 1\ntables:\n  a/b:\n    pull: {interval: 1s, every: 2s}\n",
			[]string{`line 4: tables[a/b].pull.every: unknown key "every" (known keys: interval, max_staleness)`}},
		{"unknown auto key", "version: 1\ntables:\n  a/b:\n    auto:\n      ratio: 10\n      hysteresis: 10s\n",
			[]string{`line 6: tables[a/b].auto.hysteresis: unknown key "hysteresis" (known keys: ratio, low_ratio, window, min_dwell)`}},
		{"unknown retention key", "version: 1\ndefaults:\n  retention:\n    max_rows: 5\n",
			[]string{`line 4: defaults.retention.max_rows: unknown key "max_rows" (known keys: max_changes, max_bytes, max_age)`}},

		{"bad mode value", "version: 1\ntables:\n  a/b:\n    mode: fast\n",
			[]string{`line 4: tables[a/b].mode: invalid mode "fast" (want push, pull or auto)`}},
		{"mode in capitals", "version: 1\ndefaults: {mode: Push}\n",
			[]string{`line 2: defaults.mode: invalid mode "Push"`}},
		{"empty mode", "version: 1\ntables:\n  a/b: {mode: \"\"}\n",
			[]string{`line 3: tables[a/b].mode: invalid mode ""`}},
		{"null mode", "version: 1\ntables:\n  a/b:\n    mode:\n",
			[]string{`line 4: tables[a/b].mode: want a value, got nothing`}},
		{"mode is a list", "version: 1\ntables:\n  a/b:\n    mode: [push]\n",
			[]string{`line 4: tables[a/b].mode: want a value, got a list`}},

		{"negative interval", "version: 1\ntables:\n  a/b:\n    pull:\n      interval: -1s\n",
			[]string{`line 5: tables[a/b].pull.interval: must not be negative, got -1s`}},
		{"negative max_staleness", "version: 1\ndefaults:\n  pull: {max_staleness: -5s}\n",
			[]string{`line 3: defaults.pull.max_staleness: must not be negative, got -5s`}},
		{"bad duration string", "version: 1\ntables:\n  a/b:\n    pull: {interval: 5x}\n",
			[]string{`line 4: tables[a/b].pull.interval: bad duration "5x" (want a Go duration such as 250ms, 5s or 24h)`}},
		{"duration without unit", "version: 1\ntables:\n  a/b:\n    pull:\n      max_staleness: 5\n",
			[]string{`line 5: tables[a/b].pull.max_staleness: bad duration "5"`}},
		{"duration in days", "version: 1\ndefaults:\n  retention: {max_age: 7d}\n",
			[]string{`line 3: defaults.retention.max_age: bad duration "7d"`}},
		{"negative max_age", "version: 1\ndefaults:\n  retention: {max_age: -1h}\n",
			[]string{`line 3: defaults.retention.max_age: must not be negative, got -1h`}},
		{"null duration", "version: 1\ndefaults:\n  auto:\n    window:\n",
			[]string{`line 4: defaults.auto.window: want a value, got nothing`}},

		{"ratio 1", "version: 1\ntables:\n  a/b:\n    auto: {ratio: 1}\n",
			[]string{`line 4: tables[a/b].auto.ratio: must be a number above 1, got 1`}},
		{"ratio below 1", "version: 1\ntables:\n  a/b:\n    auto:\n      ratio: 0.5\n",
			[]string{`line 5: tables[a/b].auto.ratio: must be a number above 1, got 0.5`}},
		{"ratio negative", "version: 1\ndefaults:\n  auto: {ratio: -10}\n",
			[]string{`line 3: defaults.auto.ratio: must be a number above 1, got -10`}},
		{"ratio not a number", "version: 1\ndefaults:\n  auto: {ratio: ten}\n",
			[]string{`line 3: defaults.auto.ratio: want a number, got "ten"`}},
		{"ratio infinite", "version: 1\ndefaults:\n  auto: {ratio: .inf}\n",
			[]string{`line 3: defaults.auto.ratio: want a finite number, got ".inf"`}},
		{"ratio NaN", "version: 1\ndefaults:\n  auto: {ratio: .nan}\n",
			[]string{`line 3: defaults.auto.ratio: want a finite number, got ".nan"`}},
		{"low_ratio zero", "version: 1\ndefaults:\n  auto: {low_ratio: 0}\n",
			[]string{`line 3: defaults.auto.low_ratio: must be a number above 0, got 0`}},
		{"low_ratio not below ratio", "version: 1\ntables:\n  a/b:\n    auto:\n      ratio: 4\n      low_ratio: 4\n",
			[]string{`line 6: tables[a/b].auto.low_ratio: must be below ratio 4, got 4`}},
		{"low_ratio over default ratio", "version: 1\ntables:\n  a/b:\n    auto: {low_ratio: 12}\n",
			[]string{`line 4: tables[a/b].auto.low_ratio: must be below ratio 10, got 12 (this entry over the defaults)`}},
		{"ratio under defaults' low_ratio", "version: 1\ndefaults:\n  auto: {low_ratio: 6}\ntables:\n  a/b:\n    auto: {ratio: 5}\n",
			[]string{`line 6: tables[a/b].auto.low_ratio: must be below ratio 5, got 6 (this entry over the defaults)`}},
		{"window zero", "version: 1\ndefaults:\n  auto: {window: 0s}\n",
			[]string{`line 3: defaults.auto.window: must be positive, got 0s`}},
		{"negative min_dwell", "version: 1\ndefaults:\n  auto: {min_dwell: -1s}\n",
			[]string{`line 3: defaults.auto.min_dwell: must not be negative, got -1s`}},

		{"negative max_changes", "version: 1\ndefaults:\n  retention:\n    max_changes: -1\n",
			[]string{`line 4: defaults.retention.max_changes: must not be negative, got -1`}},
		{"fractional max_changes", "version: 1\ndefaults:\n  retention:\n    max_changes: 1e6\n",
			[]string{`line 4: defaults.retention.max_changes: want an integer, got "1e6"`}},
		{"max_bytes with SI unit", "version: 1\ndefaults:\n  retention: {max_bytes: 1GB}\n",
			[]string{`line 3: defaults.retention.max_bytes: bad size "1GB" (want integer bytes or an integer with B, KiB, MiB, GiB or TiB, e.g. 512MiB)`}},
		{"max_bytes fractional", "version: 1\ndefaults:\n  retention: {max_bytes: 1.5GiB}\n",
			[]string{`line 3: defaults.retention.max_bytes: bad size "1.5GiB"`}},
		{"max_bytes negative", "version: 1\ndefaults:\n  retention: {max_bytes: -1}\n",
			[]string{`line 3: defaults.retention.max_bytes: must not be negative, got -1`}},
		{"max_bytes too large", "version: 1\ndefaults:\n  retention: {max_bytes: 9000000TiB}\n",
			[]string{`line 3: defaults.retention.max_bytes: size "9000000TiB" is too large`}},

		{"table name without service", "version: 1\ntables:\n  store_managers: {mode: push}\n",
			[]string{`line 3: tables[store_managers]: table name "store_managers" must be SERVICE/TABLE`}},
		{"table name with two slashes", "version: 1\ntables:\n  a/b/c: {}\n",
			[]string{`line 3: tables[a/b/c]: table name "a/b/c" must be SERVICE/TABLE`}},
		{"empty service", "version: 1\ntables:\n  /b: {}\n",
			[]string{`line 3: tables[/b]: bad name "" in "/b"`}},
		{"empty table", "version: 1\ntables:\n  a/: {}\n",
			[]string{`line 3: tables[a/]: bad name "" in "a/"`}},
		{"space in name", "version: 1\ntables:\n  \"my svc/t\": {}\n",
			[]string{`line 3: tables[my svc/t]: bad name "my svc" in "my svc/t" (want 1-128 characters of A-Z a-z 0-9 _ . -)`}},
		{"name too long", "version: 1\ntables:\n  a/" + strings.Repeat("x", 129) + ": {}\n",
			[]string{`line 3: tables[a/` + strings.Repeat("x", 129) + `]: bad name`}},

		{"duplicate table key", "version: 1\ntables:\n  a/b: {mode: push}\n  c/d: {}\n  a/b: {mode: pull}\n",
			[]string{`line 5: tables[a/b]: duplicate key "a/b" (first at line 3)`}},
		{"duplicate field key", "version: 1\ntables:\n  a/b:\n    mode: push\n    mode: pull\n",
			[]string{`line 5: tables[a/b].mode: duplicate key "mode" (first at line 4)`}},
		{"duplicate top-level key", "version: 1\nversion: 1\n",
			[]string{`line 2: version: duplicate key "version" (first at line 1)`}},
		{"section is a scalar", "version: 1\ntables:\n  a/b:\n    pull: 5s\n",
			[]string{`line 4: tables[a/b].pull: want a mapping, got "5s"`}},
		{"tables is a list", "version: 1\ntables:\n  - a/b\n",
			[]string{`line 3: tables: want a mapping, got a list`}},
		{"entry is a scalar", "version: 1\ntables:\n  a/b: push\n",
			[]string{`line 3: tables[a/b]: want a mapping, got "push"`}},
		{"key is a mapping", "version: 1\n? {a: b}\n: 1\n",
			[]string{`line 2: keys must be strings, got a mapping`}},
		{"merge of a scalar", "version: 1\ntables:\n  a/b:\n    <<: 5\n",
			[]string{`line 4: tables[a/b]: want a mapping, got "5"`}},

		{"every problem at once", `version: 3
tables:
  a/b:
    mode: sometimes
    pull: {interval: 1 second}
  c/d:
    auto: {ratio: 1}
  bad:
    retention: {max_bytes: lots}
extra: 1
`, []string{
			"line 1: version: unsupported version 3",
			`line 4: tables[a/b].mode: invalid mode "sometimes"`,
			`line 5: tables[a/b].pull.interval: bad duration "1 second"`,
			"line 7: tables[c/d].auto.ratio: must be a number above 1, got 1",
			`line 8: tables[bad]: table name "bad" must be SERVICE/TABLE`,
			`line 9: tables[bad].retention.max_bytes: bad size "lots"`,
			`line 10: extra: unknown key "extra"`,
		}},
		{"a bad anchor is reported at its line for each use", "version: 1\ntables:\n  a/b: &x {mode: nope}\n  a/c: *x\n  a/d: {<<: *x}\n",
			[]string{`line 3: tables[a/b].mode: invalid mode "nope"`, `line 3: tables[a/c].mode: invalid mode "nope"`,
				`line 3: tables[a/d].mode: invalid mode "nope"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded with %+v; want an error", c)
			}
			if c != nil {
				t.Errorf("Parse returned a config with its error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid: %v", err)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Errorf("error is not an *Error: %T %v", err, err)
			}
			msg := err.Error()
			lines := strings.Split(msg, "\n")
			if len(lines) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%s", len(lines), len(tt.want), msg)
			}
			for i, w := range tt.want {
				if i < len(lines) && !strings.Contains(lines[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, lines[i], w)
				}
			}
		})
	}
}

func TestParse_ErrorFields(t *testing.T) {
	_, err := Parse([]byte("version: 1\ntables:\n  a/b:\n    pull: {interval: soon}\n"))
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *Error", err)
	}
	want := Error{Line: 4, Column: 22, Key: "tables[a/b].pull.interval",
		Msg: `bad duration "soon" (want a Go duration such as 250ms, 5s or 24h)`}
	if *e != want {
		t.Errorf("error = %+v, want %+v", *e, want)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "modes.yaml")
	if err := os.WriteFile(good, ExampleYAML(), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if _, ok := c.Lookup("stores/store_managers"); !ok {
		t.Errorf("loaded config misses stores/store_managers")
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\ntables:\n  a/b: {mode: maybe}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	want := bad + `: line 3: tables[a/b].mode: invalid mode "maybe"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Load(bad) error = %v, want it to contain %q", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.File != bad || e.Line != 3 {
		t.Errorf("Load(bad) error = %#v, want an *Error with the file and line 3", e)
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) error = %v, want os.ErrNotExist", err)
	}
}

func TestConfig_ValidateGo(t *testing.T) {
	tests := []struct {
		name string
		c    Config
		want string // "" = valid
	}{
		{"zero", Config{}, ""},
		{"version 1", Config{Version: 1}, ""},
		{"version 2", Config{Version: 2}, "version: unsupported version 2 (want 1)"},
		{"bad mode", Config{Defaults: TableConfig{Mode: Mode(7)}}, "defaults.mode: mode(7) is not a mode (want push, pull or auto)"},
		{"bad name", Config{Tables: map[string]TableConfig{"nope": {}}}, `tables[nope]: table name "nope" must be SERVICE/TABLE`},
		{"negative interval", Config{Tables: map[string]TableConfig{"a/b": {Pull: PullConfig{Interval: new(-time.Second)}}}},
			"tables[a/b].pull.interval: must not be negative, got -1s"},
		{"ratio", Config{Defaults: TableConfig{Auto: AutoConfig{Ratio: new(1.0)}}}, "defaults.auto.ratio: must be a number above 1, got 1"},
		{"negative max_bytes", Config{Defaults: TableConfig{Retention: RetentionConfig{MaxBytes: new(int64(-5))}}},
			"defaults.retention.max_bytes: must not be negative, got -5"},
		{"does not combine", Config{Defaults: TableConfig{Auto: AutoConfig{Window: new(time.Second), LowRatio: new(3.0)}},
			Tables: map[string]TableConfig{"a/b": {Auto: AutoConfig{Ratio: new(2.0)}}}},
			"tables[a/b].auto.low_ratio: must be below ratio 2, got 3 (this entry over the defaults)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || err.Error() != tt.want {
				t.Errorf("Validate = %v, want %q", err, tt.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid")
			}
		})
	}
}

func TestTableConfig_Validate(t *testing.T) {
	if err := (&TableConfig{}).Validate(); err != nil {
		t.Errorf("zero TableConfig: %v", err)
	}
	err := (&TableConfig{Auto: AutoConfig{Ratio: new(0.5), Window: new(time.Duration(0))}}).Validate()
	want := "auto.ratio: must be a number above 1, got 0.5\nauto.window: must be positive, got 0s"
	if err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
}

func TestConfig_Resolve_Precedence(t *testing.T) {
	file := &Config{Defaults: TableConfig{
		Mode: Pull,
		Pull: PullConfig{Interval: new(2 * time.Second), MaxStaleness: new(7 * time.Second)},
		Auto: AutoConfig{Window: new(20 * time.Second)},
	}}
	owner := &TableConfig{
		Mode:      Auto,
		Pull:      PullConfig{Interval: new(3 * time.Second)},
		Auto:      AutoConfig{Ratio: new(50.0)},
		Retention: RetentionConfig{MaxChanges: new(uint64(0))}, // unlimited beats the built-in 1,000,000
	}
	sub := &TableConfig{
		Pull: PullConfig{Interval: new(time.Duration(0))}, // on demand beats the owner's 3s
	}
	override := &TableConfig{Mode: Push}

	tests := []struct {
		name                    string
		override, sub, ownerDef *TableConfig
		c                       *Config
		want                    Settings
	}{
		{"nothing set", nil, nil, nil, nil, DefaultSettings()},
		{"empty levels", &TableConfig{}, &TableConfig{}, &TableConfig{}, &Config{}, DefaultSettings()},
		{"file defaults only", nil, nil, nil, file, Settings{
			Mode: Pull,
			Pull: PullSettings{Interval: 2 * time.Second, MaxStaleness: 7 * time.Second},
			Auto: AutoSettings{Ratio: 10, LowRatio: 5, Window: 20 * time.Second, MinDwell: 20 * time.Second},
			Retention: Retention{MaxChanges: DefaultMaxChanges, MaxBytes: DefaultMaxBytes,
				MaxAge: DefaultMaxAge},
		}},
		{"owner over file", nil, nil, owner, file, Settings{
			Mode:      Auto,
			Pull:      PullSettings{Interval: 3 * time.Second, MaxStaleness: 7 * time.Second},
			Auto:      AutoSettings{Ratio: 50, LowRatio: 25, Window: 20 * time.Second, MinDwell: 20 * time.Second},
			Retention: Retention{MaxChanges: 0, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge},
		}},
		{"subscription over owner, per field", nil, sub, owner, file, Settings{
			Mode:      Auto, // the subscription does not set the mode: the owner's stays
			Pull:      PullSettings{Interval: 0, MaxStaleness: 7 * time.Second},
			Auto:      AutoSettings{Ratio: 50, LowRatio: 25, Window: 20 * time.Second, MinDwell: 20 * time.Second},
			Retention: Retention{MaxChanges: 0, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge},
		}},
		{"override over everything, per field", override, sub, owner, file, Settings{
			Mode:      Push,
			Pull:      PullSettings{Interval: 0, MaxStaleness: 7 * time.Second},
			Auto:      AutoSettings{Ratio: 50, LowRatio: 25, Window: 20 * time.Second, MinDwell: 20 * time.Second},
			Retention: Retention{MaxChanges: 0, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge},
		}},
		{"override without a file", override, nil, owner, nil, Settings{
			Mode:      Push,
			Pull:      PullSettings{Interval: 3 * time.Second, MaxStaleness: DefaultMaxStaleness},
			Auto:      AutoSettings{Ratio: 50, LowRatio: 25, Window: DefaultWindow, MinDwell: DefaultWindow},
			Retention: Retention{MaxChanges: 0, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge},
		}},
		{"explicit low ratio and dwell are kept", &TableConfig{Auto: AutoConfig{LowRatio: new(2.0), MinDwell: new(time.Minute)}},
			nil, owner, file, Settings{
				Mode:      Auto,
				Pull:      PullSettings{Interval: 3 * time.Second, MaxStaleness: 7 * time.Second},
				Auto:      AutoSettings{Ratio: 50, LowRatio: 2, Window: 20 * time.Second, MinDwell: time.Minute},
				Retention: Retention{MaxChanges: 0, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.c.Resolve(tt.override, tt.sub, tt.ownerDef)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got != tt.want {
				t.Errorf("Resolve =\n %+v\nwant\n %+v", got, tt.want)
			}
		})
	}
}

func TestResolve_Conflict(t *testing.T) {
	owner := &TableConfig{Auto: AutoConfig{LowRatio: new(8.0)}}
	override := &TableConfig{Auto: AutoConfig{Ratio: new(4.0)}}
	_, err := ResolveLayers(override, owner)
	want := "resolve: auto.low_ratio: must be below ratio 4, got 8"
	if err == nil || err.Error() != want || !errors.Is(err, ErrInvalid) {
		t.Errorf("ResolveLayers = %v, want %q wrapping ErrInvalid", err, want)
	}
	// The same values the other way round combine.
	s, err := ResolveLayers(&TableConfig{Auto: AutoConfig{Ratio: new(16.0)}}, owner)
	if err != nil || s.Auto.Ratio != 16 || s.Auto.LowRatio != 8 {
		t.Errorf("ResolveLayers = %+v, %v; want ratio 16, low 8", s.Auto, err)
	}
}

func TestMerge(t *testing.T) {
	hi := &TableConfig{Pull: PullConfig{Interval: new(time.Second)}}
	lo := &TableConfig{Mode: Pull, Pull: PullConfig{Interval: new(time.Hour), MaxStaleness: new(time.Minute)}}
	m := Merge(hi, nil, lo)
	if m.Mode != Pull || *m.Pull.Interval != time.Second || *m.Pull.MaxStaleness != time.Minute {
		t.Errorf("Merge = %+v", m)
	}
	*m.Pull.Interval = 5 * time.Hour
	*m.Pull.MaxStaleness = 5 * time.Hour
	if *hi.Pull.Interval != time.Second || *lo.Pull.MaxStaleness != time.Minute {
		t.Errorf("Merge result shares pointers with its inputs")
	}
	if got := Merge(); !reflect.DeepEqual(got, TableConfig{}) {
		t.Errorf("Merge() = %+v, want zero", got)
	}
}

func TestConfig_Lookup(t *testing.T) {
	c, err := Parse(ExampleYAML())
	if err != nil {
		t.Fatal(err)
	}
	got, ok := c.Lookup("stores/stores")
	if !ok || got.Mode != Pull {
		t.Errorf("Lookup(stores/stores) = %+v, %v", got, ok)
	}
	if got.Retention.MaxAge == nil || *got.Retention.MaxAge != 6*time.Hour {
		t.Errorf("Lookup is merged with something: %+v", got.Retention)
	}
	if got.Auto.Ratio != nil {
		t.Errorf("Lookup merged the defaults in: auto.ratio = %v", *got.Auto.Ratio)
	}
	if _, ok := c.Lookup("stores/nope"); ok {
		t.Errorf("Lookup(stores/nope) found something")
	}
	var nilc *Config
	if _, ok := nilc.Lookup("stores/stores"); ok {
		t.Errorf("nil Config found something")
	}
}

func TestDefaultSettings_Valid(t *testing.T) {
	if err := DefaultSettings().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := DefaultSettings()
	bad.Mode = Unset
	bad.Auto.LowRatio = 20
	err := bad.Validate()
	want := "mode: unset is not a mode (want push, pull or auto)\nauto.low_ratio: must be below ratio 10, got 20"
	if err == nil || err.Error() != want {
		t.Errorf("Validate = %v, want %q", err, want)
	}
}
