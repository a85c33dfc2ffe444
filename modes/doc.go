// Package modes holds the replication modes of a table and their
// configuration, and the access policy (who may read which table); of
// replmesh it imports only transport (the name rules), so the component,
// the broker, the daemon and replctl share it.
//
// A table travels in one of three modes (Mode): Push streams every change
// as it commits; Pull sends nothing until the consumer asks and then a
// coalesced delta; Auto switches between the two by the ratio of the
// owner's write rate to the consumer's read rate (Policy, with RateMeter
// to measure the rates).
//
// The per-table settings come from a YAML file (Parse, Load; ExampleYAML
// shows one) or the same Go structs (Config, TableConfig) and are resolved
// field by field: broker override > subscription option > owner's table
// default > file defaults > built-in defaults (Config.Resolve).
//
// The access policy (AccessPolicy: which services may read which tables,
// and per-service limits on the brokers) comes from a YAML file of its own
// (ParseAccessPolicy, LoadAccessPolicy), parsed as strictly as the modes
// file and failing with the same *Error, or is built in Go
// (NewAccessPolicy, Allow, SetLimits).
//
//	cfg, err := modes.Load("modes.yaml")
//	if err != nil {
//		return err // e.g. modes.yaml: line 12: tables[stores/stores].pull.interval: bad duration "5" (…)
//	}
//	sub, _ := cfg.Lookup("stores/store_managers") // this consumer's entry: its subscription option
//	owner := &modes.TableConfig{Mode: modes.Pull} // the owner's table default, from the broker
//	var override *modes.TableConfig              // no broker override (replctl mode set) now
//	s, err := cfg.Resolve(override, sub, owner)   // s.Mode == modes.Auto, from the entry
//
//	if s.Mode == modes.Auto {
//		policy, _ := modes.NewPolicy(s.Auto, modes.Push)
//		reads := modes.NewRateMeter(s.Auto.Window)
//		// on every heartbeat, with the time and the owner's write rate:
//		reads.Record(now, readCount.Load())
//		d := policy.Observe(modes.Observation{At: now,
//			OwnerWriteRate: ownerRate, ConsumerReadRate: reads.Rate()})
//		if d.Switched {
//			// switch the subscription in-stream; keep d.Reason for status
//		}
//	}
package modes
