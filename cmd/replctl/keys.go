package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/replmesh/replmesh/transport"
)

// defaultKeysLimit is how many keys "keys" lists unless -limit says
// otherwise.
const defaultKeysLimit = 1000

// keysResult is the JSON form of "keys": the keys of the table that
// begin with the prefix, in key order, read on the primary Instance in
// Pages pages. Each page is read at one seq; Seq is the first page's,
// LastSeq the last page's (equal unless the table was written to while
// the listing ran).
type keysResult struct {
	Service   string    `json:"service"`
	Table     string    `json:"table"`
	Instance  string    `json:"instance"`
	Addr      string    `json:"addr"`
	LogID     string    `json:"log_id"`
	Seq       uint64    `json:"seq"`
	LastSeq   uint64    `json:"last_seq"`
	Prefix    *string   `json:"prefix,omitempty"` // when valid UTF-8
	PrefixHex string    `json:"prefix_hex"`
	Keys      []keyItem `json:"keys"`
	Pages     int       `json:"pages"`
	// More: keys remain after the last one listed (-limit was reached).
	More bool `json:"more"`
}

// keyItem is one key of a keysResult.
type keyItem struct {
	Key    *string `json:"key,omitempty"` // when valid UTF-8
	KeyHex string  `json:"key_hex"`
}

func (c *cli) keys(ctx context.Context, args []string) error {
	fs := c.cmdFlags("keys", "SERVICE/TABLE [PREFIX]")
	limit := fs.Int("limit", defaultKeysLimit, "list at most `N` keys (0: all of them)")
	asHex := fs.Bool("hex", false, "print the keys as hex")
	keyHex := fs.Bool("key-hex", false, "the PREFIX argument is hex")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usagef("keys: want SERVICE/TABLE [PREFIX], got %d arguments", len(pos))
	}
	if *limit < 0 {
		return usagef("keys: -limit must be >= 0")
	}
	service, table, err := parseTableRef(pos[0])
	if err != nil {
		return err
	}
	var prefix []byte
	if len(pos) == 2 {
		if prefix, err = keyArg("keys", pos[1], *keyHex); err != nil {
			return err
		}
	}

	owner, cn, err := c.primaryConn(ctx, service)
	if err != nil {
		return err
	}
	res := keysResult{Service: service, Table: table, Instance: owner.Primary.Instance, Addr: owner.Primary.Addr,
		Prefix: textOrNil(prefix), PrefixHex: hex.EncodeToString(prefix), Keys: []keyItem{}}
	req := &transport.KeysRequest{Version: transport.ProtocolVersion, Table: table, Prefix: prefix, Service: c.service}
	listed := 0
	for {
		req.Limit = transport.MaxKeysPage
		if *limit > 0 {
			req.Limit = uint32(min(*limit-listed, transport.MaxKeysPage))
		}
		cctx, cancel := context.WithTimeout(ctx, c.timeout)
		page, err := cn.repl.Keys(cctx, req)
		cancel()
		if err != nil {
			err = c.ownerError(service, table, owner.Primary, err)
			if errors.Is(err, transport.ErrUnknownTable) {
				err = fmt.Errorf("%w%s", err, knownTables(owner))
			}
			return err
		}
		if res.Pages == 0 {
			res.LogID, res.Seq = page.LogID, page.Seq
		} else if page.LogID != res.LogID {
			return fmt.Errorf("%s/%s: the table's history changed during the listing (log %s, now %s); run keys again",
				service, table, res.LogID, page.LogID)
		}
		res.Pages++
		res.LastSeq = page.Seq
		listed += len(page.Keys)
		if *limit > 0 && listed > *limit {
			return fmt.Errorf("%s/%s: the owner answered %d keys for at most %d", service, table, listed, *limit)
		}
		for _, k := range page.Keys {
			if c.output == "json" {
				res.Keys = append(res.Keys, keyItem{Key: textOrNil(k), KeyHex: hex.EncodeToString(k)})
			} else if err := textf(c.stdout, "%s\n", showBytes(k, *asHex)); err != nil {
				return err // a closed pipe: stop listing
			}
		}
		res.More = page.More
		if !page.More || *limit > 0 && listed == *limit {
			break
		}
		if len(page.Keys) == 0 {
			return fmt.Errorf("%s/%s: the owner said more keys follow but sent none", service, table)
		}
		req.After = page.Keys[len(page.Keys)-1]
	}
	if c.output == "json" {
		return writeJSON(c.stdout, res)
	}
	if res.More {
		textf(c.stderr, "replctl: keys %s/%s: the first %d keys listed, more follow (raise -limit, or -limit 0 for all)\n",
			service, table, listed)
	}
	return nil
}

// knownTables names the tables the broker knows the owner service for,
// to follow an unknown-table error.
func knownTables(owner transport.ServiceOwner) string {
	if len(owner.Tables) == 0 {
		return ""
	}
	names := make([]string, len(owner.Tables))
	for i, ti := range owner.Tables {
		names[i] = ti.Table
	}
	return fmt.Sprintf(" (the tables of %s: %s)", owner.Service, strings.Join(names, ", "))
}
