package transport

import (
	"encoding/binary"
	"fmt"
)

// maxNesting bounds how deeply arrays and maps may nest in one message. Our
// messages nest at most three deep; the rest is room for fields a newer peer
// may add.
const maxNesting = 32

// checkBounds walks the first msgpack object in b without decoding it and
// fails if any length it claims (string, binary, extension, array or map)
// is longer than the bytes left in b, or if containers nest deeper than
// maxNesting.
//
// msgpack/v5 (v5.4.1) trusts length claims: it allocates a byte slice of the
// claimed length before reading it, and grows a slice to the claimed number
// of elements before decoding them, so an 8-byte message claiming 4 GiB
// allocates 4 GiB. It also skips unknown fields recursively, so a message of
// a few MiB of nested arrays overflows the stack (a fatal error, not a
// panic). After checkBounds, every allocation is bounded by len(b) times the
// size of one element, and recursion by maxNesting.
func checkBounds(b []byte) error {
	var (
		pos   int
		left  uint64 = 1 // objects still to read at the current level
		outer [maxNesting]uint64
		depth int
	)
	for {
		for left == 0 {
			if depth == 0 {
				return nil
			}
			depth--
			left = outer[depth]
		}
		left--
		if pos >= len(b) {
			return fmt.Errorf("unexpected end of data at byte %d", pos)
		}
		c := b[pos]
		pos++

		// Work out what follows the code: size bytes of length, then either
		// that many bytes of payload (skip) or that many objects (items).
		var (
			size  int    // bytes of the big-endian length after c
			fixed int    // bytes of payload that follow regardless of length
			n     uint64 // length given in the code itself
			items uint64 // multiplier: 0 for payload bytes, 1 for array, 2 for map
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // positive and negative fixint
		case c <= 0x8f: // fixmap
			n, items = uint64(c&0x0f), 2
		case c <= 0x9f: // fixarray
			n, items = uint64(c&0x0f), 1
		case c <= 0xbf: // fixstr
			n = uint64(c & 0x1f)
		default:
			switch c {
			case 0xc0, 0xc2, 0xc3: // nil, false, true
			case 0xc4, 0xd9: // bin8, str8
				size = 1
			case 0xc5, 0xda: // bin16, str16
				size = 2
			case 0xc6, 0xdb: // bin32, str32
				size = 4
			case 0xc7: // ext8: length, type, data
				size, fixed = 1, 1
			case 0xc8: // ext16
				size, fixed = 2, 1
			case 0xc9: // ext32
				size, fixed = 4, 1
			case 0xcc, 0xd0: // uint8, int8
				fixed = 1
			case 0xcd, 0xd1: // uint16, int16
				fixed = 2
			case 0xca, 0xce, 0xd2: // float32, uint32, int32
				fixed = 4
			case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
				fixed = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext1..fixext16: type, data
				fixed = 1 + 1<<(c-0xd4)
			case 0xdc: // array16
				size, items = 2, 1
			case 0xdd: // array32
				size, items = 4, 1
			case 0xde: // map16
				size, items = 2, 2
			case 0xdf: // map32
				size, items = 4, 2
			default: // 0xc1 is never used
				return fmt.Errorf("invalid code 0x%02x at byte %d", c, pos-1)
			}
		}
		if size > len(b)-pos {
			return fmt.Errorf("unexpected end of data at byte %d", pos)
		}
		switch size {
		case 1:
			n = uint64(b[pos])
		case 2:
			n = uint64(binary.BigEndian.Uint16(b[pos:]))
		case 4:
			n = uint64(binary.BigEndian.Uint32(b[pos:]))
		}
		pos += size
		rest := uint64(len(b) - pos)
		if uint64(fixed) > rest {
			return fmt.Errorf("unexpected end of data at byte %d", pos)
		}
		pos += fixed
		rest -= uint64(fixed)

		if items == 0 {
			// Payload bytes (zero for scalars).
			if n > rest {
				return fmt.Errorf("length %d at byte %d is past the end of data", n, pos)
			}
			pos += int(n)
			continue
		}
		// Every object takes at least one byte.
		if n > rest/items {
			return fmt.Errorf("%d elements at byte %d are more than the data holds", n, pos)
		}
		if n == 0 {
			continue
		}
		if depth == maxNesting {
			return fmt.Errorf("nesting deeper than %d at byte %d", maxNesting, pos)
		}
		outer[depth] = left
		depth++
		left = n * items
	}
}
