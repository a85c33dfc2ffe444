package benchkit

import (
	"fmt"
	"time"
)

// SI renders a count compactly: 172.7k, 1.25M, 950.
func SI(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// FormatDuration renders d in the largest unit it reaches: seconds with
// sDigits decimals, milliseconds with msDigits, microseconds with one,
// else whole nanoseconds. Each command keeps the precision its tables
// have always shown.
func FormatDuration(d time.Duration, sDigits, msDigits int) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.*f s", sDigits, d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.*f ms", msDigits, float64(d)/1e6)
	case d >= time.Microsecond:
		return fmt.Sprintf("%.1f µs", float64(d)/1e3)
	}
	return fmt.Sprintf("%d ns", d)
}
