package emulator

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

const (
	defaultBudgetWindow = 5 * time.Minute
	// perKeyWriteInterval is Cloudflare's "1 write per second to the same key".
	perKeyWriteInterval = time.Second
)

type dropPhase int

const (
	dropNone dropPhase = iota
	dropBefore
	dropAfter
)

type keyRef struct {
	ns  nsRef
	key string
}

// faultGate decides, per request, which fault (if any) strikes.
type faultGate struct {
	now func() time.Time

	mu  sync.Mutex
	f   Faults
	rng *rand.Rand
	// stamps is a ring of the admission times of the last f.Budget
	// requests: a sliding-window log bounded by the budget.
	stamps       []time.Time
	head, n      int
	blockedUntil time.Time
	lastWrite    map[keyRef]time.Time
	lastSweep    time.Time
}

func newFaultGate(f Faults, now func() time.Time) *faultGate {
	g := &faultGate{now: now}
	g.set(f)
	return g
}

func (g *faultGate) set(f Faults) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f.BudgetWindow <= 0 {
		f.BudgetWindow = defaultBudgetWindow
	}
	if f.BlockFor <= 0 {
		f.BlockFor = f.BudgetWindow
	}
	if f.Budget != g.f.Budget || f.BudgetWindow != g.f.BudgetWindow || f.BlockFor != g.f.BlockFor || g.stamps == nil {
		g.stamps = make([]time.Time, max(f.Budget, 0))
		g.head, g.n = 0, 0
		g.blockedUntil = time.Time{}
	}
	if !f.PerKeyWriteLimit || g.lastWrite == nil {
		g.lastWrite = make(map[keyRef]time.Time)
	}
	g.rng = rand.New(rand.NewPCG(uint64(f.Seed), uint64(f.Seed)^0x9e3779b97f4a7c15))
	g.f = f
}

// delay sleeps for the injected latency, or until ctx ends.
func (g *faultGate) delay(ctx context.Context) error {
	g.mu.Lock()
	d := g.f.Latency
	if g.f.LatencyJitter > 0 {
		d += time.Duration(g.rng.Int64N(int64(g.f.LatencyJitter)))
	}
	g.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *faultGate) dropDecision() dropPhase {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f.DropRate <= 0 || g.rng.Float64() >= g.f.DropRate {
		return dropNone
	}
	if g.rng.IntN(2) == 0 {
		return dropBefore
	}
	return dropAfter
}

func (g *faultGate) serverError() (int, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f.ServerErrorRate <= 0 || g.rng.Float64() >= g.f.ServerErrorRate {
		return 0, false
	}
	statuses := [...]int{http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable}
	return statuses[g.rng.IntN(len(statuses))], true
}

// rateHeaders sets Cloudflare's Ratelimit and Ratelimit-Policy headers
// (sent on every response since 2025-09) when a budget is configured.
func (g *faultGate) rateHeaders(h http.Header) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f.Budget <= 0 {
		return
	}
	now := g.now()
	remaining, reset := g.f.Budget-g.liveLocked(now), 0
	if g.n > 0 {
		reset = ceilSeconds(g.stamps[g.head].Add(g.f.BudgetWindow).Sub(now))
	}
	h.Set("Ratelimit", fmt.Sprintf(`"default";r=%d;t=%d`, max(remaining, 0), reset))
	h.Set("Ratelimit-Policy", fmt.Sprintf(`"default";q=%d;w=%d`, g.f.Budget, ceilSeconds(g.f.BudgetWindow)))
}

// liveLocked counts admissions still inside the window.
func (g *faultGate) liveLocked(now time.Time) int {
	live := 0
	for i := 0; i < g.n; i++ {
		if now.Sub(g.stamps[(g.head+i)%len(g.stamps)]) < g.f.BudgetWindow {
			live++
		}
	}
	return live
}

// admit charges a request to the budget. When the budget is spent it
// blocks every request for BlockFor and returns the Retry-After value.
func (g *faultGate) admit() (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.f.Budget <= 0 {
		return "", false
	}
	now := g.now()
	if now.Before(g.blockedUntil) {
		return fmt.Sprint(ceilSeconds(g.blockedUntil.Sub(now))), true
	}
	if g.n == len(g.stamps) {
		oldest := g.stamps[g.head]
		if now.Sub(oldest) < g.f.BudgetWindow {
			g.blockedUntil = now.Add(g.f.BlockFor)
			// After the block the client starts with a full budget.
			g.head, g.n = 0, 0
			return fmt.Sprint(ceilSeconds(g.f.BlockFor)), true
		}
		g.stamps[g.head] = now
		g.head = (g.head + 1) % len(g.stamps)
		return "", false
	}
	g.stamps[(g.head+g.n)%len(g.stamps)] = now
	g.n++
	return "", false
}

// ceilSeconds rounds up to whole seconds, at least 1, as Retry-After does.
func ceilSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// keyWritesAllowed applies the one-write-per-second-per-key limit to keys
// and records the writes it allows.
func (g *faultGate) keyWritesAllowed(ns nsRef, keys []string) []bool {
	ok := make([]bool, len(keys))
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.f.PerKeyWriteLimit {
		for i := range ok {
			ok[i] = true
		}
		return ok
	}
	now := g.now()
	if len(g.lastWrite) > 4096 && now.Sub(g.lastSweep) >= perKeyWriteInterval {
		for k, t := range g.lastWrite {
			if now.Sub(t) >= perKeyWriteInterval {
				delete(g.lastWrite, k)
			}
		}
		g.lastSweep = now
	}
	for i, k := range keys {
		kr := keyRef{ns, k}
		if t, seen := g.lastWrite[kr]; seen && now.Sub(t) < perKeyWriteInterval {
			continue
		}
		g.lastWrite[kr] = now
		ok[i] = true
	}
	return ok
}
