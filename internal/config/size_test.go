package config

import (
	"strings"
	"testing"
)

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{
		0:                "0 bytes",
		1:                "1 bytes",
		1023:             "1023 bytes",
		1024:             "1KiB",
		1536:             "1536 bytes",
		3<<20 + 1<<10:    "3073KiB",
		1 << 20:          "1MiB",
		1<<20 + 1:        "1048577 bytes",
		25 << 20:         "25MiB",
		18874368:         "18MiB",
		2 << 30:          "2GiB",
		1 << 40:          "1024GiB",
		100_000_000:      "100000000 bytes",
		-(1 << 20):       "-1MiB",
		1<<62 + 1<<30:    "4294967297GiB",
		8<<20 + 512<<10:  "8704KiB",
		123_456_789_0123: "1234567890123 bytes",
	} {
		got := FormatSize(n)
		if got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
		// What FormatSize writes, ParseSize reads back, the plain number
		// of a byte count included. Negative and huge sizes are refused by
		// ParseSize, so only their text is checked.
		if n < 0 || n > 1<<61 {
			continue
		}
		if back, err := ParseSize(strings.TrimSuffix(got, " bytes")); err != nil || back != n {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, got, back, err)
		}
	}
}

func TestHumanSize(t *testing.T) {
	for n, want := range map[int64]string{
		-5:          "-5 B",
		0:           "0 B",
		1023:        "1023 B",
		1024:        "1.0 KiB",
		1536:        "1.5 KiB",
		1<<20 - 1:   "1024.0 KiB",
		1 << 20:     "1.0 MiB",
		25 << 20:    "25.0 MiB",
		100_000_000: "95.4 MiB",
		5 << 30:     "5.0 GiB",
		3 << 40:     "3.0 TiB",
		7 << 50:     "7.0 PiB",
		1 << 62:     "4.0 EiB",
	} {
		if got := HumanSize(n); got != want {
			t.Errorf("HumanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
