package cputime

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"
)

// Machine is the CPU time all of the machine's processes have used (the
// busy time of every CPU since boot: user, nice, system, irq, softirq and
// steal, from /proc/stat, at the kernel's clock tick, usually 10 ms); ok
// is false where it cannot be read.
func Machine() (d time.Duration, ok bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, false
	}
	return parseStatCPU(sc.Text())
}

// userHZ is the unit of /proc/stat's times (USER_HZ, 100 on Linux).
const userHZ = 100

// parseStatCPU reads the busy time from /proc/stat's "cpu" line: the
// sum of its fields but idle (the fourth) and iowait (the fifth), and the
// guest times (the ninth and tenth, already counted in user and nice).
func parseStatCPU(line string) (time.Duration, bool) {
	fields := strings.Fields(line)
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, false
	}
	var busy int64
	for i, f := range fields[1:] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, false
		}
		switch i {
		case 3, 4, 8, 9: // idle, iowait, guest, guest_nice
		default:
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / userHZ, true
}
