package modes_test

import (
	"fmt"
	"time"

	"github.com/replmesh/replmesh/modes"
)

func ExampleParse() {
	_, err := modes.Parse([]byte(`version: 1
tables:
  stores/store_managers:
    mode: auto
    pull: {interval: 5}
    auto: {ratio: 1, window: 10s}
`))
	fmt.Println(err)
	// Output:
	// line 5: tables[stores/store_managers].pull.interval: bad duration "5" (want a Go duration such as 250ms, 5s or 24h)
	// line 6: tables[stores/store_managers].auto.ratio: must be a number above 1, got 1
}

func ExampleConfig_Resolve() {
	cfg, err := modes.Parse(modes.ExampleYAML())
	if err != nil {
		panic(err)
	}
	// A consumer of stores/store_managers: its file entry is its
	// subscription option; the owner announced pull; an operator has set a
	// broker override to push. Each field comes from the highest level
	// that sets it.
	sub, _ := cfg.Lookup("stores/store_managers")
	owner := &modes.TableConfig{Mode: modes.Pull}
	override := &modes.TableConfig{Mode: modes.Push}
	s, err := cfg.Resolve(override, sub, owner)
	if err != nil {
		panic(err)
	}
	fmt.Println(s.Mode, s.Pull.Interval, s.Pull.MaxStaleness, s.Auto.Ratio, s.Auto.LowRatio)

	s, _ = cfg.Resolve(nil, sub, owner)
	fmt.Println(s.Mode)
	// Output:
	// push 1s 5s 10 4
	// auto
}

func ExamplePolicy() {
	p, err := modes.NewPolicy(modes.AutoSettings{Ratio: 10, LowRatio: 5, Window: 10 * time.Second}, modes.Push)
	if err != nil {
		panic(err)
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for sec := 0; sec <= 12; sec++ {
		// A hot table: the owner writes 20,000 changes/s, the consumer
		// reads 10 times a second.
		d := p.Observe(modes.Observation{At: start.Add(time.Duration(sec) * time.Second),
			OwnerWriteRate: 20000, ConsumerReadRate: 10})
		if d.Switched {
			fmt.Printf("%ds: %s: %s\n", sec, d.Mode, d.Reason)
		}
	}
	// Output:
	// 10s: pull: write/read ratio 2000 > 10 for 10s (writes 20000/s, reads 10/s)
}
