package main

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kvsync/kvsync/internal/emulator"
	"github.com/kvsync/kvsync/watcher"
)

var (
	chaosDuration = flag.Duration("chaos.duration", 75*time.Second, "how long TestChaosConvergence drives random file operations (the whole test takes about 30-60 s more)")
	chaosSeed     = flag.Int64("chaos.seed", 0, "seed of TestChaosConvergence's random operations and faults; 0 picks one from the clock")
)

// chaosOpsPerSecond bounds the driver, so a longer -chaos.duration means
// proportionally more operations and the run stays self-limiting.
const chaosOpsPerSecond = 60

// TestChaosConvergence runs the daemon against an emulator that fails 10% of
// requests with 5xx, drops 5% of connections (half of them after the write
// took effect), enforces a tight request budget (scaled in time) and the
// one-write-per-second-per-key limit, and adds latency, while a seeded driver
// makes thousands of random file operations and kills the daemon with
// SIGKILL three times at random moments. Once the driver stops and the faults
// end, KV must hold exactly the tree, and every key kvsync did not write must
// be untouched.
//
// It runs twice: with the state directory kept across the kills, as on a
// host, and wiped at each kill and before the final restart, as for a pod
// whose emptyDir goes with it: the namespace alone must then tell the new
// process what is published, and the final restart must write nothing.
func TestChaosConvergence(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run takes minutes; skipped with -short")
	}
	t.Run("state kept", func(t *testing.T) { runChaos(t, false) })
	t.Run("state wiped at each kill", func(t *testing.T) { runChaos(t, true) })
}

func runChaos(t *testing.T, wipe bool) {
	seed := *chaosSeed
	if seed == 0 {
		seed = time.Now().UnixNano()
	}
	report := func(format string, args ...any) {
		t.Logf(format, args...)
		fmt.Printf("chaos: "+format+"\n", args...)
	}
	report("seed %d (rerun with -chaos.seed=%d), driving for %s, state wiped at each kill: %v", seed, seed, *chaosDuration, wipe)
	rng := rand.New(rand.NewSource(seed))

	faults := emulator.Faults{
		ServerErrorRate:  0.10,
		DropRate:         0.05,
		Budget:           150,
		BudgetWindow:     5 * time.Second,
		BlockFor:         2 * time.Second,
		PerKeyWriteLimit: true,
		Latency:          2 * time.Millisecond,
		LatencyJitter:    20 * time.Millisecond,
		Seed:             seed,
	}
	env := newKVEnv(t, faults)

	// Keys kvsync never wrote: the driver only creates d*/ and f* names.
	foreign := map[string]kvEntry{
		"zz-foreign/config.json": {Value: `{"owner":"someone else"}`, Metadata: `{"by":"hand"}`},
		"zz-foreign/blob":        {Value: "\x00\x01\x02 binary"},
		"top-level-theirs.txt":   {Value: "theirs"},
	}
	for k, v := range foreign {
		ent := emulator.Entry{Value: []byte(v.Value)}
		if v.Metadata != "" {
			ent.Metadata = []byte(v.Metadata)
		}
		if err := env.em.Seed(testAccount, testNamespace, k, ent); err != nil {
			t.Fatal(err)
		}
	}

	d := &chaosDriver{t: t, root: env.root, rng: rng}
	for i := 0; i < 40; i++ {
		d.create()
	}
	// 50 requests/s sustained plus a burst of 50: more than the emulator's
	// budget of 150 per 5 s, so the budget is hit for real. api.budget is per
	// 5 real minutes and bounds rate*300+burst.
	env.writeConfig("rate: 50\nburst: 50\nbudget: 15050\nconcurrency: 4\ntimeout: 10s\nmax_retries: 12",
		"rescan_interval: 5s\nmax_deletes: -1")
	quietLogs(t, env.config)

	proc := env.startDaemon()
	procs := []*kvsyncProc{proc}
	running := true
	start := time.Now()
	deadline := start.Add(*chaosDuration)
	maxOps := int(chaosDuration.Seconds() * chaosOpsPerSecond)
	// Kills land at random operation counts, so every run gets its three
	// whether the op cap or the clock ends the drive.
	var kills []int
	for i := 0; i < 3; i++ {
		kills = append(kills, int((0.1+0.75*rng.Float64())*float64(maxOps)))
	}
	sort.Ints(kills)
	var restartAt time.Time
	killed := 0
	for d.ops < maxOps && time.Now().Before(deadline) {
		now := time.Now()
		if running && len(kills) > 0 && d.ops >= kills[0] {
			kills = kills[1:]
			proc.kill9()
			wipeState(t, env, wipe)
			running = false
			killed++
			restartAt = now.Add(time.Duration(200+rng.Intn(2800)) * time.Millisecond)
			report("kill -9 #%d after %d operations; down for %s", killed, d.ops, restartAt.Sub(now).Round(time.Millisecond))
		}
		if !running && now.After(restartAt) {
			proc = env.startDaemon()
			procs = append(procs, proc)
			running = true
		}
		d.step()
		// Pacing the driver (chaosOpsPerSecond on average), not an
		// assertion: nothing is checked until the driver stops.
		time.Sleep(time.Duration(rng.Intn(2*int(time.Second/chaosOpsPerSecond))) / 2)
	}
	if !running {
		proc = env.startDaemon()
		procs = append(procs, proc)
	}
	for killed < 3 {
		// A drive the clock cut short still gets its three kills.
		proc.kill9()
		wipeState(t, env, wipe)
		killed++
		proc = env.startDaemon()
		procs = append(procs, proc)
	}
	driveTime := time.Since(start)

	// Leave no broken sidecar behind: every file's expected state is then
	// simply the tree's.
	fixed := d.fixSidecars()
	env.em.SetFaults(emulator.Faults{})
	counts := env.em.Counts()

	want := expectTree(t, env.root, nil)
	for k, v := range foreign {
		want[k] = v
	}
	// The periodic rescan (5 s) reconciles anything the watcher missed while
	// kvsync was down or the API was failing.
	diffs := waitDiff(env.em, want, 90*time.Second)
	if len(diffs) == 0 {
		// A clean restart must find nothing to change and keep it exact.
		proc.stop()
		wipeState(t, env, wipe)
		before := env.writeCounts()
		proc = env.startDaemon()
		procs = append(procs, proc)
		// Ready: the initial sync's every request was answered; the clean
		// stop drains anything after it. The counters are then final.
		proc.waitReady(60 * time.Second)
		proc.stop()
		diffs = diffKV(env.em, want)
		if extra := env.writesSince(before, 0); extra != "" {
			t.Errorf("a clean restart after convergence made write requests (%s), want none", extra)
		}
	} else {
		proc.stop()
	}

	var fives, dropped, limited, total int
	for k, n := range counts {
		total += n
		switch {
		case k.Status >= 500:
			fives += n
		case k.Status == emulator.StatusDropped:
			dropped += n
		case k.Status == 429:
			limited += n
		}
	}
	report("%d file operations in %s (%s), %d broken sidecars fixed at the end, %d files in the tree",
		d.ops, driveTime.Round(time.Millisecond), d.summary(), fixed, len(want)-len(foreign))
	report("faults injected: %d answered 5xx, %d connections dropped, %d answered 429, of %d requests", fives, dropped, limited, total)
	report("restarts: %d kill -9 and 1 clean restart; final difference: %d keys", killed, len(diffs))
	if len(diffs) > 0 {
		logKeyHistory(t, procs, diffs)
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
		}
		t.Fatalf("seed %d: the emulator does not hold the tree:\n  %s", seed, strings.Join(diffs, "\n  "))
	}
	got := env.em.Snapshot(testAccount, testNamespace)
	for k, v := range foreign {
		g := got[k]
		if string(g.Value) != v.Value || compactJSON(g.Metadata) != v.Metadata || g.Expiration != 0 {
			t.Errorf("key %q, not written by kvsync, was changed: %+v", k, g)
		}
	}
	if fives == 0 || dropped == 0 || limited == 0 {
		t.Errorf("the run did not meet every fault (5xx %d, dropped %d, 429 %d); it proves less than it claims", fives, dropped, limited)
	}
}

// wipeState removes the daemon's state directory when wipe is set: a new
// pod starts with an empty emptyDir.
func wipeState(t *testing.T, env *kvEnv, wipe bool) {
	t.Helper()
	if !wipe {
		return
	}
	if err := os.RemoveAll(env.stateDir); err != nil {
		t.Fatal(err)
	}
}

// quietLogs turns the harness's debug logging down to info: thousands of
// operations would otherwise log hundreds of megabytes into memory.
func quietLogs(t *testing.T, config string) {
	t.Helper()
	b, err := os.ReadFile(config)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte("log_level: debug"), []byte("log_level: info"), 1)
	if err := os.WriteFile(config, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitDiff polls until the emulator holds want or within passes, and
// returns the last difference.
func waitDiff(em *emulator.Emulator, want map[string]kvEntry, within time.Duration) []string {
	deadline := time.Now().Add(within)
	for {
		diffs := diffKV(em, want)
		if len(diffs) == 0 || time.Now().After(deadline) {
			return diffs
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// chaosDriver makes random file operations under root. It names files f*
// and directories d* only, none hidden or editor debris, so the tree's
// expected keys are simply its regular files.
type chaosDriver struct {
	t     *testing.T
	root  string
	rng   *rand.Rand
	ops   int
	kinds map[string]int
	seq   int
	files []string // relative; refreshed from the disk every few operations
	dirs  []string
	stale int
}

func (d *chaosDriver) done(kind string) {
	d.ops++
	if d.kinds == nil {
		d.kinds = map[string]int{}
	}
	d.kinds[kind]++
	d.stale++
}

func (d *chaosDriver) summary() string {
	var parts []string
	for k, n := range d.kinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func (d *chaosDriver) refresh() {
	if d.files != nil && d.stale < 8 {
		return
	}
	d.files, d.dirs, d.stale = d.files[:0], d.dirs[:0], 0
	filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == d.root {
			return nil
		}
		rel, _ := filepath.Rel(d.root, p)
		switch {
		case e.IsDir():
			d.dirs = append(d.dirs, rel)
		case !strings.HasSuffix(rel, watcher.SidecarSuffix):
			d.files = append(d.files, rel)
		}
		return nil
	})
}

func (d *chaosDriver) pickFile() (string, bool) {
	d.refresh()
	if len(d.files) == 0 {
		return "", false
	}
	return filepath.Join(d.root, d.files[d.rng.Intn(len(d.files))]), true
}

// newName is a fresh path in a random existing or new directory.
func (d *chaosDriver) newName() string {
	d.refresh()
	d.seq++
	dir := ""
	switch r := d.rng.Intn(10); {
	case r < 2:
	case r < 4 || len(d.dirs) == 0:
		dir = fmt.Sprintf("d%d", d.rng.Intn(12))
		if d.rng.Intn(3) == 0 {
			dir = filepath.Join(dir, fmt.Sprintf("d%d", d.rng.Intn(4)))
		}
	default:
		dir = d.dirs[d.rng.Intn(len(d.dirs))]
	}
	return filepath.Join(d.root, dir, fmt.Sprintf("f%05d.txt", d.seq))
}

func (d *chaosDriver) content() []byte {
	var n int
	switch r := d.rng.Intn(100); {
	case r < 2:
		n = 1<<20 + d.rng.Intn(300<<10) // over the bulk threshold: a single PUT
	case r < 10:
		n = d.rng.Intn(64 << 10)
	default:
		n = d.rng.Intn(2048)
	}
	b := make([]byte, n)
	if d.rng.Intn(4) == 0 {
		d.rng.Read(b) // binary: base64 in bulk requests
	} else {
		for i := range b {
			b[i] = 'a' + byte(d.rng.Intn(26))
		}
	}
	return b
}

func (d *chaosDriver) write(p string, b []byte) bool {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false
	}
	return os.WriteFile(p, b, 0o644) == nil
}

func (d *chaosDriver) create() {
	if d.write(d.newName(), d.content()) {
		d.done("create")
	}
}

// step makes one random operation; operations on paths that a concurrent
// rename removed are simply not counted.
func (d *chaosDriver) step() {
	r := d.rng.Intn(100)
	if r < 20 {
		d.create()
		return
	}
	p, ok := d.pickFile()
	if !ok {
		d.create()
		return
	}
	switch {
	case r < 35:
		if d.write(p, d.content()) {
			d.done("modify")
		}
	case r < 42:
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			_, err = f.Write(d.content())
			f.Close()
			if err == nil {
				d.done("append")
			}
		}
	case r < 48:
		fi, err := os.Stat(p)
		if err == nil && os.Truncate(p, d.rng.Int63n(fi.Size()+1)) == nil {
			d.done("truncate")
		}
	case r < 58:
		if os.Remove(p) == nil {
			d.done("delete")
		}
	case r < 68:
		to := d.newName()
		if os.MkdirAll(filepath.Dir(to), 0o755) == nil && os.Rename(p, to) == nil {
			d.done("rename")
		}
	case r < 72:
		// Replace an existing file by a rename over it, as editors save.
		q, ok := d.pickFile()
		if ok && q != p && os.Rename(p, q) == nil {
			d.done("rename-over")
		}
	case r < 77:
		d.refresh()
		if len(d.dirs) > 0 {
			from := filepath.Join(d.root, d.dirs[d.rng.Intn(len(d.dirs))])
			d.seq++
			to := filepath.Join(filepath.Dir(from), fmt.Sprintf("d%d", 100+d.seq))
			if os.Rename(from, to) == nil {
				d.done("rename-dir")
			}
		}
	case r < 79:
		d.refresh()
		if len(d.dirs) > 3 {
			if os.RemoveAll(filepath.Join(d.root, d.dirs[d.rng.Intn(len(d.dirs))])) == nil {
				d.done("delete-dir")
			}
		}
	case r < 88:
		meta := fmt.Sprintf(`{"n": %d, "tags": ["x", "y"], "s": %q}`, d.rng.Intn(1000), strings.Repeat("m", d.rng.Intn(200)))
		if d.write(p+watcher.SidecarSuffix, []byte(meta)) {
			d.done("sidecar-write")
		}
	case r < 94:
		bad := []string{`{not json`, `[1, 2, 3]`, `"a string"`, `{"big": "` + strings.Repeat("x", 1100) + `"}`, "\xff\xfe"}
		if d.write(p+watcher.SidecarSuffix, []byte(bad[d.rng.Intn(len(bad))])) {
			d.done("sidecar-break")
		}
	default:
		if os.Remove(p+watcher.SidecarSuffix) == nil {
			d.done("sidecar-delete")
		}
	}
}

// fixSidecars rewrites every invalid sidecar with valid metadata and returns
// how many it fixed.
func (d *chaosDriver) fixSidecars() int {
	n := 0
	filepath.WalkDir(d.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(p, watcher.SidecarSuffix) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			d.t.Fatal(err)
		}
		if _, err := watcher.ParseSidecar(b); err != nil {
			if err := os.WriteFile(p, []byte(`{"fixed": true}`), 0o644); err != nil {
				d.t.Fatal(err)
			}
			n++
		}
		return nil
	})
	return n
}

// logKeyHistory prints what each daemon logged about the keys that differ,
// the only trail of how a key went astray.
func logKeyHistory(t *testing.T, procs []*kvsyncProc, diffs []string) {
	for _, d := range diffs[:min(len(diffs), 5)] {
		_, rest, ok := strings.Cut(d, "key \"")
		if !ok {
			continue
		}
		key, _, _ := strings.Cut(rest, "\"")
		for i, p := range procs {
			var lines []string
			for _, l := range strings.Split(p.logs.String(), "\n") {
				if strings.Contains(l, key) {
					lines = append(lines, l)
				}
			}
			if len(lines) > 0 {
				t.Logf("daemon %d on %s:\n%s", i+1, key, strings.Join(lines[:min(len(lines), 20)], "\n"))
			}
		}
	}
}
