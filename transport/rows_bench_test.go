package transport

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkUnmarshalRows decodes a full transfer's rows frame (300 rows
// of 10-byte keys and 256-byte values), per row.
func BenchmarkUnmarshalRows(b *testing.B) {
	rows := make([]Row, 300)
	var body []byte
	for i := range rows {
		body = AppendRow(body, fmt.Appendf(nil, "k%09d", i), bytes.Repeat([]byte{byte(i)}, 256))
	}
	msg, err := Marshal(EncodedRows(len(rows), body))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var f OwnerFrame
		if err := Unmarshal(msg, &f); err != nil || len(f.Rows) != len(rows) {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(rows)), "ns/row")
}
