package modes

import (
	_ "embed"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/replmesh/replmesh/transport"
)

// Version is the config file format this package reads and writes.
const Version = 1

// Built-in defaults: the bottom of every resolution (see DefaultSettings).
const (
	DefaultMode         = Push
	DefaultPullInterval = time.Second
	DefaultMaxStaleness = time.Duration(0) // reads never trigger a pull
	DefaultRatio        = 10.0
	DefaultWindow       = 10 * time.Second
	DefaultMaxChanges   = 1_000_000
	DefaultMaxBytes     = 1 << 30
	DefaultMaxAge       = 24 * time.Hour
	// The auto low ratio defaults to Ratio/2 and the minimum dwell time to
	// Window; both follow the resolved Ratio and Window.
)

// Config is a per-table mode config file: file-wide defaults and entries
// for single tables. The daemon, the example services and replctl read the
// same format (see Parse for the YAML form and ExampleYAML for a sample).
//
// Every field of a TableConfig is optional; an unset field is inherited
// from the next level down (see Config.Resolve).
type Config struct {
	// Version is the format version; Parse requires `version: 1` in the
	// file. A Config built in Go may leave it 0.
	Version int `yaml:"version"`
	// Defaults apply to every table, below everything else.
	Defaults TableConfig `yaml:"defaults,omitempty"`
	// Tables maps "SERVICE/TABLE" to that table's settings.
	Tables map[string]TableConfig `yaml:"tables,omitempty"`
}

// TableConfig is one level of configuration for a table: a file entry, the
// file defaults, an owner's table default, a subscription option or a
// broker override. A zero Mode and nil pointers mean "not set here".
// Pointers let an explicit zero (interval 0 = on demand only, retention 0 =
// unlimited) differ from "not set"; in Go write e.g. new(time.Second).
type TableConfig struct {
	Mode      Mode            `yaml:"mode,omitempty"`
	Pull      PullConfig      `yaml:"pull,omitempty"`
	Auto      AutoConfig      `yaml:"auto,omitempty"`
	Retention RetentionConfig `yaml:"retention,omitempty"`
}

// PullConfig tunes pull mode (and the pull phases of auto mode).
type PullConfig struct {
	// Interval between pulls; 0 = on demand only (Refresh and stale reads).
	Interval *time.Duration `yaml:"interval,omitempty"`
	// MaxStaleness: a read of a replica older than this pulls first;
	// 0 = reads never pull.
	MaxStaleness *time.Duration `yaml:"max_staleness,omitempty"`
}

// AutoConfig tunes auto mode (see Policy).
type AutoConfig struct {
	// Ratio: switch push -> pull when owner writes/s over consumer reads/s
	// stays above it for Window. Must be > 1.
	Ratio *float64 `yaml:"ratio,omitempty"`
	// LowRatio: switch pull -> push when the ratio stays below it for
	// Window. Must be > 0 and < Ratio; unset = Ratio/2.
	LowRatio *float64 `yaml:"low_ratio,omitempty"`
	// Window: how long a condition must hold before a switch. Must be > 0.
	Window *time.Duration `yaml:"window,omitempty"`
	// MinDwell: the least time between two switches; unset = Window.
	MinDwell *time.Duration `yaml:"min_dwell,omitempty"`
}

// RetentionConfig is how much change log an owner keeps for a table; a
// consumer behind the log's first entry gets a full transfer. 0 =
// unlimited. Only the owner's levels matter for it.
type RetentionConfig struct {
	MaxChanges *uint64        `yaml:"max_changes,omitempty"`
	MaxBytes   *int64         `yaml:"max_bytes,omitempty"`
	MaxAge     *time.Duration `yaml:"max_age,omitempty"`
}

// Settings is a fully resolved table config: every field has its value.
// Resolve returns it; replica uses it.
type Settings struct {
	Mode      Mode // Push, Pull or Auto
	Pull      PullSettings
	Auto      AutoSettings
	Retention Retention
}

// PullSettings is the resolved PullConfig.
type PullSettings struct {
	Interval     time.Duration // 0 = on demand only
	MaxStaleness time.Duration // 0 = reads never pull
}

// AutoSettings is the resolved AutoConfig; NewPolicy takes it.
type AutoSettings struct {
	Ratio    float64       // > 1
	LowRatio float64       // > 0, < Ratio
	Window   time.Duration // > 0
	MinDwell time.Duration // >= 0
}

// Retention says how much change log an owner keeps for a table: the
// resolved RetentionConfig. A consumer whose seq is older than the log's
// first entry gets a full transfer. Zero fields are unlimited. It is the
// one retention type: a component's config holds one as its default for
// every owned table, and a modes file's entry overrides it field by field
// (RetentionConfig.Over).
type Retention struct {
	MaxChanges uint64
	MaxBytes   int64
	MaxAge     time.Duration
}

// DefaultRetention returns the built-in retention: 1,000,000 changes,
// 1 GiB, 24h (DefaultMaxChanges, DefaultMaxBytes, DefaultMaxAge).
func DefaultRetention() Retention {
	return Retention{MaxChanges: DefaultMaxChanges, MaxBytes: DefaultMaxBytes, MaxAge: DefaultMaxAge}
}

// Over returns base with each field that c sets replaced by c's value: a
// file entry's retention over a component's default.
func (c RetentionConfig) Over(base Retention) Retention {
	set(&base.MaxChanges, c.MaxChanges)
	set(&base.MaxBytes, c.MaxBytes)
	set(&base.MaxAge, c.MaxAge)
	return base
}

// DefaultSettings returns the built-in defaults: push; pull every second
// with no staleness bound on reads; auto at ratio 10 (back at 5) over 10s
// windows; retention 1,000,000 changes, 1 GiB, 24h.
func DefaultSettings() Settings {
	return Settings{
		Mode: DefaultMode,
		Pull: PullSettings{Interval: DefaultPullInterval, MaxStaleness: DefaultMaxStaleness},
		Auto: AutoSettings{Ratio: DefaultRatio, LowRatio: DefaultRatio / 2,
			Window: DefaultWindow, MinDwell: DefaultWindow},
		Retention: DefaultRetention(),
	}
}

// Validate checks that s is usable as it is.
func (s Settings) Validate() error {
	var v validator
	v.settings("", s)
	return v.err()
}

// Validate checks that the auto settings are usable by a Policy.
func (a AutoSettings) Validate() error {
	var v validator
	v.auto("", a)
	return v.err()
}

// Lookup returns a copy of the file's own entry for table
// ("SERVICE/TABLE"), not merged with the file defaults: pass it to Resolve as the level it is
// (an owner's table default for the owner, a subscription option for a
// consumer). A nil Config has no entries.
func (c *Config) Lookup(table string) (*TableConfig, bool) {
	if c == nil {
		return nil, false
	}
	t, ok := c.Tables[table]
	if !ok {
		return nil, false
	}
	return &t, true
}

// Resolve returns the settings a table runs with, merging field by field
// with this precedence, highest first:
//
//	broker override > subscription option > owner's table default > c.Defaults > DefaultSettings
//
// Any level may be nil. Precedence is per field, not per entry: an
// override that sets only the mode keeps the pull interval of the
// subscription, and so on. Auto's LowRatio and MinDwell, when no level
// sets them, follow the resolved Ratio (Ratio/2) and Window. A nil Config
// has no defaults. The result is validated; an error means the levels
// combine into something unusable (e.g. a LowRatio from one level not
// below the Ratio from another).
func (c *Config) Resolve(override, subscription, ownerDefault *TableConfig) (Settings, error) {
	var defaults *TableConfig
	if c != nil {
		defaults = &c.Defaults
	}
	return ResolveLayers(override, subscription, ownerDefault, defaults)
}

// ResolveLayers merges any number of levels, highest precedence first,
// over DefaultSettings, field by field (see Config.Resolve), and validates
// the result.
func ResolveLayers(layers ...*TableConfig) (Settings, error) {
	s := settle(Merge(layers...))
	var v validator
	v.settings("", s)
	if err := v.err(); err != nil {
		return Settings{}, fmt.Errorf("resolve: %w", err)
	}
	return s, nil
}

// settle fills the unset fields of m from DefaultSettings.
func settle(m TableConfig) Settings {
	s := DefaultSettings()
	if m.Mode != Unset {
		s.Mode = m.Mode
	}
	set(&s.Pull.Interval, m.Pull.Interval)
	set(&s.Pull.MaxStaleness, m.Pull.MaxStaleness)
	set(&s.Auto.Ratio, m.Auto.Ratio)
	set(&s.Auto.Window, m.Auto.Window)
	s.Auto.LowRatio = s.Auto.Ratio / 2
	set(&s.Auto.LowRatio, m.Auto.LowRatio)
	s.Auto.MinDwell = s.Auto.Window
	set(&s.Auto.MinDwell, m.Auto.MinDwell)
	s.Retention = m.Retention.Over(s.Retention)
	return s
}

func set[T any](dst *T, src *T) {
	if src != nil {
		*dst = *src
	}
}

// Merge merges levels field by field, highest precedence first: each field
// comes from the first level that sets it. Nil levels are skipped. The
// result shares no pointers with the inputs.
func Merge(layers ...*TableConfig) TableConfig {
	var out TableConfig
	for _, l := range layers {
		if l == nil {
			continue
		}
		if out.Mode == Unset {
			out.Mode = l.Mode
		}
		fill(&out.Pull.Interval, l.Pull.Interval)
		fill(&out.Pull.MaxStaleness, l.Pull.MaxStaleness)
		fill(&out.Auto.Ratio, l.Auto.Ratio)
		fill(&out.Auto.LowRatio, l.Auto.LowRatio)
		fill(&out.Auto.Window, l.Auto.Window)
		fill(&out.Auto.MinDwell, l.Auto.MinDwell)
		fill(&out.Retention.MaxChanges, l.Retention.MaxChanges)
		fill(&out.Retention.MaxBytes, l.Retention.MaxBytes)
		fill(&out.Retention.MaxAge, l.Retention.MaxAge)
	}
	return out
}

func fill[T any](dst **T, src *T) {
	if *dst == nil && src != nil {
		v := *src
		*dst = &v
	}
}

// Validate checks one level on its own: every field that is set is in
// range. (Whether levels combine well is Resolve's check.)
func (t *TableConfig) Validate() error {
	var v validator
	v.table("", t)
	return v.err()
}

// Validate checks the whole config: the version, every table name
// ("SERVICE/TABLE"), every value, and that each table's entry resolves
// over the file defaults. It returns every problem, joined; each is an
// *Error naming its key.
func (c *Config) Validate() error {
	v := validator{}
	c.validate(&v, true)
	return v.err()
}

func (c *Config) validate(v *validator, checkVersion bool) {
	if checkVersion && c.Version != 0 && c.Version != Version {
		v.add("version", "unsupported version %d (want %d)", c.Version, Version)
	}
	n := len(v.errs)
	v.table("defaults", &c.Defaults)
	defaultsOK := len(v.errs) == n
	for _, e := range v.errs {
		if e.Key == "defaults" || strings.HasPrefix(e.Key, "defaults.") {
			defaultsOK = false // a parse error: do not report it again per table
		}
	}
	names := make([]string, 0, len(c.Tables))
	for name := range c.Tables {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		key := "tables[" + name + "]"
		if msg := checkTableName(name); msg != "" {
			v.add(key, "%s", msg)
		}
		t := c.Tables[name]
		n := len(v.errs)
		v.table(key, &t)
		entryOK := len(v.errs) == n
		for _, e := range v.errs {
			if strings.HasPrefix(e.Key, key+".") {
				entryOK = false
			}
		}
		if defaultsOK && entryOK { // each fine on its own: do they combine?
			m := len(v.errs)
			v.settings(key, settle(Merge(&t, &c.Defaults)))
			for _, e := range v.errs[m:] {
				e.Msg += " (this entry over the defaults)"
			}
		}
	}
}

// checkTableName returns "" for a good "SERVICE/TABLE" name, else why not.
func checkTableName(name string) string {
	svc, tbl, ok := strings.Cut(name, "/")
	if !ok || strings.Contains(tbl, "/") {
		return fmt.Sprintf("table name %q must be SERVICE/TABLE", name)
	}
	for _, part := range []string{svc, tbl} {
		if !transport.ValidName(part) {
			return fmt.Sprintf("bad name %q in %q (want %s)", part, name, transport.NameRule)
		}
	}
	return ""
}

// validator collects *Errors. pos, when set, gives the file position of a
// key path so that the same checks serve Validate and Parse.
type validator struct {
	file string
	pos  map[string]position
	errs []*Error
}

type position struct{ line, col int }

func (v *validator) at(key string) position {
	if v.pos == nil {
		return position{}
	}
	// The closest key that has a position: "a.b.c", then "a.b", then "a".
	for k := key; k != ""; {
		if p, ok := v.pos[k]; ok {
			return p
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return position{}
}

func (v *validator) add(key, format string, args ...any) {
	v.addAt(key, v.at(key), format, args...)
}

func (v *validator) addAt(key string, p position, format string, args ...any) {
	v.errs = append(v.errs, &Error{File: v.file, Line: p.line, Column: p.col, Key: key, Msg: fmt.Sprintf(format, args...)})
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func (v *validator) table(prefix string, t *TableConfig) {
	if t.Mode != Unset && !t.Mode.Valid() {
		v.add(join(prefix, "mode"), "%s is not a mode (want push, pull or auto)", t.Mode)
	}
	v.optDuration(join(prefix, "pull.interval"), t.Pull.Interval)
	v.optDuration(join(prefix, "pull.max_staleness"), t.Pull.MaxStaleness)
	a := t.Auto
	if a.Ratio != nil {
		v.ratio(join(prefix, "auto.ratio"), *a.Ratio)
	}
	if a.LowRatio != nil {
		v.lowRatio(join(prefix, "auto.low_ratio"), *a.LowRatio)
		if a.Ratio != nil && *a.LowRatio >= *a.Ratio && *a.LowRatio > 0 {
			v.add(join(prefix, "auto.low_ratio"), "must be below ratio %g, got %g", *a.Ratio, *a.LowRatio)
		}
	}
	if a.Window != nil {
		v.window(join(prefix, "auto.window"), *a.Window)
	}
	v.optDuration(join(prefix, "auto.min_dwell"), a.MinDwell)
	if r := t.Retention.MaxBytes; r != nil && *r < 0 {
		v.add(join(prefix, "retention.max_bytes"), "must not be negative, got %d", *r)
	}
	v.optDuration(join(prefix, "retention.max_age"), t.Retention.MaxAge)
}

func (v *validator) settings(prefix string, s Settings) {
	if !s.Mode.Valid() {
		v.add(join(prefix, "mode"), "%s is not a mode (want push, pull or auto)", s.Mode)
	}
	v.duration(join(prefix, "pull.interval"), s.Pull.Interval)
	v.duration(join(prefix, "pull.max_staleness"), s.Pull.MaxStaleness)
	v.auto(join(prefix, "auto"), s.Auto)
	if s.Retention.MaxBytes < 0 {
		v.add(join(prefix, "retention.max_bytes"), "must not be negative, got %d", s.Retention.MaxBytes)
	}
	v.duration(join(prefix, "retention.max_age"), s.Retention.MaxAge)
}

func (v *validator) auto(prefix string, a AutoSettings) {
	v.ratio(join(prefix, "ratio"), a.Ratio)
	v.lowRatio(join(prefix, "low_ratio"), a.LowRatio)
	if a.LowRatio >= a.Ratio && a.LowRatio > 0 {
		v.add(join(prefix, "low_ratio"), "must be below ratio %g, got %g", a.Ratio, a.LowRatio)
	}
	v.window(join(prefix, "window"), a.Window)
	v.duration(join(prefix, "min_dwell"), a.MinDwell)
}

func (v *validator) ratio(key string, r float64) {
	if !(r > 1) || math.IsInf(r, 0) {
		v.add(key, "must be a number above 1, got %g", r)
	}
}

func (v *validator) lowRatio(key string, r float64) {
	if !(r > 0) || math.IsInf(r, 0) {
		v.add(key, "must be a number above 0, got %g", r)
	}
}

func (v *validator) window(key string, d time.Duration) {
	if d <= 0 {
		v.add(key, "must be positive, got %s", d)
	}
}

func (v *validator) duration(key string, d time.Duration) {
	if d < 0 {
		v.add(key, "must not be negative, got %s", d)
	}
}

func (v *validator) optDuration(key string, d *time.Duration) {
	if d != nil {
		v.duration(key, *d)
	}
}

// err returns the collected problems sorted by position, joined; nil if
// there are none.
func (v *validator) err() error {
	if len(v.errs) == 0 {
		return nil
	}
	sort.SliceStable(v.errs, func(i, j int) bool {
		a, b := v.errs[i], v.errs[j]
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
	errs := make([]error, 0, len(v.errs))
	seen := make(map[string]bool)
	for _, e := range v.errs {
		if s := e.Error(); !seen[s] { // one node reached twice reports once
			seen[s] = true
			errs = append(errs, e)
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return joined(errs)
}

// joined is errors.Join with a stable message: one problem per line.
type joined []error

func (j joined) Error() string {
	s := make([]string, len(j))
	for i, e := range j {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

func (j joined) Unwrap() []error { return j }

// Marshal returns c as a YAML config file that Parse reads back.
func (c *Config) Marshal() ([]byte, error) {
	out := *c
	if out.Version == 0 {
		out.Version = Version
	}
	return yaml.Marshal(&out)
}

//go:embed example.yaml
var exampleYAML []byte

// ExampleYAML returns a sample config file: the marketplace example's
// modes, with every key used and commented.
func ExampleYAML() []byte { return append([]byte(nil), exampleYAML...) }
