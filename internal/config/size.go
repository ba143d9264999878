package config

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Sizes as text, both ways. Config values and config errors use ParseSize
// and FormatSize, which share the binary units, so a size quoted in an error
// is exact and reads as the file would write it. Progress and summary lines
// use HumanSize, where an approximation reads better than an exact count.

var sizeRe = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)$`)

var sizeUnits = map[string]float64{
	"":    1,
	"b":   1,
	"kb":  1e3,
	"mb":  1e6,
	"gb":  1e9,
	"kib": 1 << 10,
	"mib": 1 << 20,
	"gib": 1 << 30,
}

// ParseSize reads a byte count: a plain number of bytes, or a number with a
// unit, decimal (kB, MB, GB) or binary (KiB, MiB, GiB), case-insensitive.
// The result must be a whole number of bytes.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "-") {
		if _, err := ParseSize(s[1:]); err == nil {
			return 0, fmt.Errorf("%s is negative", s)
		}
	}
	m := sizeRe.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size such as 1048576, 512KiB or 1MiB", s)
	}
	unit, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("%q: unknown unit %q; use B, kB, MB, GB, KiB, MiB or GiB", s, m[2])
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size such as 1048576, 512KiB or 1MiB", s)
	}
	bytes := n * unit
	if bytes >= math.MaxInt64/2 {
		return 0, fmt.Errorf("%s is too large", s)
	}
	if bytes != math.Trunc(bytes) {
		return 0, fmt.Errorf("%s is not a whole number of bytes", s)
	}
	return int64(bytes), nil
}

// binaryUnits are the units FormatSize and HumanSize write, largest first.
var binaryUnits = []struct {
	name  string
	shift uint
}{{"EiB", 60}, {"PiB", 50}, {"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}}

// FormatSize writes n exactly: with the largest binary unit ParseSize knows
// that divides it ("8MiB", "3073KiB", which ParseSize reads back), or in
// bytes ("1048577 bytes", whose number ParseSize reads back).
func FormatSize(n int64) string {
	if n != 0 {
		for _, u := range binaryUnits {
			if u.shift <= 30 && n%(1<<u.shift) == 0 {
				return fmt.Sprintf("%d%s", n>>u.shift, u.name)
			}
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// HumanSize writes n for a person reading a progress or summary line: to
// one decimal in the largest binary unit it reaches ("1.5 MiB"), or in bytes
// below 1 KiB ("512 B").
func HumanSize(n int64) string {
	for _, u := range binaryUnits {
		if n >= 1<<u.shift {
			return fmt.Sprintf("%.1f %s", float64(n)/float64(int64(1)<<u.shift), u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}
