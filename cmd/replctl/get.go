package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/replmesh/replmesh/transport"
)

// getResult is the JSON form of "get": every key asked for, in order, all
// read at Seq on the primary Instance.
type getResult struct {
	Service  string     `json:"service"`
	Table    string     `json:"table"`
	Instance string     `json:"instance"`
	Addr     string     `json:"addr"`
	LogID    string     `json:"log_id"`
	Seq      uint64     `json:"seq"`
	Values   []getValue `json:"values"`
}

// getValue is one key of a getResult.
type getValue struct {
	Key      *string `json:"key,omitempty"` // when valid UTF-8
	KeyHex   string  `json:"key_hex"`
	Found    bool    `json:"found"`
	Value    *string `json:"value,omitempty"` // when found and valid UTF-8
	ValueHex *string `json:"value_hex,omitempty"`
	// ValueMsgpack is the value decoded from msgpack, as JSON, when it is
	// one msgpack object and not printable text (see msgpackJSON).
	ValueMsgpack json.RawMessage `json:"value_msgpack,omitempty"`
}

func (c *cli) get(ctx context.Context, args []string) error {
	fs := c.cmdFlags("get", "SERVICE/TABLE KEY...")
	asHex := fs.Bool("hex", false, "print values (and keys) as hex, with no msgpack decoding")
	raw := fs.Bool("raw", false, "no msgpack decoding: one key in text output writes the value's bytes as stored, nothing else (escaped only when stdout is a terminal); several keys or -o json show raw hex, as -hex")
	keyHex := fs.Bool("key-hex", false, "the KEY arguments are hex")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return usagef("get: want SERVICE/TABLE KEY..., got %d arguments", len(pos))
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	// -raw means no decoding: the stored bytes themselves where they can
	// be written as they are (one value, text output), raw hex elsewhere.
	if *raw && (len(pos) != 2 || c.output == "json") {
		*raw, *asHex = false, true
	}
	keys := make([][]byte, 0, len(pos)-1)
	for _, arg := range pos[1:] {
		k, err := keyArg("get", arg, *keyHex)
		if err != nil {
			return err
		}
		if len(k) == 0 {
			return usagef("get: empty key")
		}
		keys = append(keys, k)
	}

	owner, cn, err := c.primaryConn(ctx, service)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := cn.repl.Get(cctx, &transport.GetRequest{Version: transport.ProtocolVersion, Table: table, Keys: keys, Service: c.service})
	cancel()
	if err != nil {
		return c.ownerError(service, table, owner.Primary, err)
	}
	if len(resp.Values) != len(keys) {
		return fmt.Errorf("%s/%s: the owner answered %d values for %d keys", service, table, len(resp.Values), len(keys))
	}

	res := getResult{Service: service, Table: table, Instance: owner.Primary.Instance, Addr: owner.Primary.Addr,
		LogID: resp.LogID, Seq: resp.Seq, Values: make([]getValue, len(keys))}
	var missing []string
	for i, k := range keys {
		v := resp.Values[i]
		gv := getValue{Key: textOrNil(k), KeyHex: hex.EncodeToString(k), Found: v.Found}
		if v.Found {
			h := hex.EncodeToString(v.Value)
			gv.ValueHex = &h
			gv.Value = textOrNil(v.Value)
			if !*asHex {
				gv.ValueMsgpack, _ = msgpackJSON(v.Value)
			}
		} else {
			missing = append(missing, showBytes(k, *asHex))
		}
		res.Values[i] = gv
	}

	switch {
	case c.output == "json":
		if err := writeJSON(c.stdout, res); err != nil {
			return err
		}
	case *raw:
		if resp.Values[0].Found {
			if err := writeRaw(c.stdout, resp.Values[0].Value); err != nil {
				return err
			}
		}
	default:
		textf(c.stdout, "%s/%s at seq %d on %s (log %s)\n", service, table, resp.Seq, owner.Primary.Instance, resp.LogID)
		t := newTable(c.stdout, "KEY", "VALUE")
		for i, k := range keys {
			val := "(not found)"
			if v := resp.Values[i]; v.Found {
				val = showValue(v.Value, *asHex)
			}
			t.row(showBytes(k, *asHex), val)
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	if len(missing) > 0 {
		what := "key " + missing[0] + " not"
		if len(missing) > 1 {
			what = "keys " + strings.Join(missing, ", ") + " not"
		}
		return checkFailed(fmt.Errorf("%s/%s: %s found (at seq %d)", service, table, what, resp.Seq))
	}
	return nil
}
