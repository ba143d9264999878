package main

import (
	"fmt"
	"io"
	"math"
	"strconv"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/kvapi"
)

// writeBudget prints, for `kvsync check`, how much of the account's API
// budget this config's rate limiter may spend in one budget window, next to
// the rule that matters once several processes share a token: kvsync
// enforces its own share only, and Cloudflare counts every client of the
// token together. With leader election on it also names each sync's Lease,
// which the Role of the processes must grant get and update on.
func writeBudget(w io.Writer, cfg config.Config) {
	api := cfg.API
	window := kvapi.BudgetWindow.Seconds()
	// The bucket holds at most burst tokens and refills at rate: over one
	// window that is at most rate×window + burst whole requests. The
	// epsilon keeps 3.333…×300 from flooring to 999.
	claim := int(math.Floor(api.Rate*window + float64(api.Burst) + 1e-6))
	fmt.Fprintf(w, "API budget: this config may send up to %s requests per %s minutes (rate %s/s × %s + burst %s) of the account's %s;"+
		" processes sharing a token must stay under %s together\n",
		thousands(claim), formatFloat(kvapi.BudgetWindow.Minutes()),
		formatFloat(math.Round(api.Rate*100)/100), formatFloat(window),
		thousands(api.Burst), thousands(api.Budget), thousands(api.Budget))
	le := cfg.LeaderElection
	if !le.Enabled {
		return
	}
	fmt.Fprintf(w, "leader election: Leases in namespace %s, this process as %q; its Role must grant get and update on each:\n", le.Namespace, le.Identity)
	for _, s := range cfg.Syncs {
		fmt.Fprintf(w, "  sync %q: Lease %s\n", s.Name, s.LeaseName)
	}
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// thousands writes n with a comma every three digits, as Cloudflare's
// documentation writes its limits.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
