// Command benchtool is the helper of bench/run.sh: it generates the
// benchmark trees, turns a tree into the inputs of the other uploaders
// (wrangler's JSON, a list for the curl loop), runs a command measuring its
// wall time and peak RSS, and reads the emulator's request counters.
//
// It exists so that run.sh needs nothing but bash, curl, Go and npm: no GNU
// time, no jq. Its output for the script is KEY=value lines.
//
// Subcommands:
//
//	gen      --dir D --files N --size BYTES [--seed S] [--sidecar-every K] [--dirs A,B]
//	treeinfo --dir D
//	pairs    --dir D --out FILE.json
//	filelist --dir D --out FILE.tsv
//	measure  --out FILE -- command [args...]
//	stats    --url STATS_URL [--account A --namespace N] [--save FILE] [--before FILE]
//	         (authenticates with $KVSYNC_EMULATOR_TOKEN)
//	freeport (prints a free TCP port on 127.0.0.1)
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sidecarSuffix is kvsync's metadata sidecar suffix (watcher.SidecarSuffix).
const sidecarSuffix = ".meta.json"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtool gen|treeinfo|pairs|filelist|measure|stats|freeport [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"gen": cmdGen, "treeinfo": cmdTreeInfo, "pairs": cmdPairs,
		"filelist": cmdFileList, "measure": cmdMeasure, "stats": cmdStats,
		"freeport": cmdFreePort,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "benchtool: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(int(ee))
		}
		fmt.Fprintf(os.Stderr, "benchtool %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// exitError passes a measured command's exit status through.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// genSpec describes a generated tree; its String form is the cache stamp.
type genSpec struct {
	files, size   int
	seed          uint64
	sidecarsEvery int
	dirs          dirLayout
}

func (g genSpec) String() string {
	s := fmt.Sprintf("benchtool-tree v1 files=%d size=%d seed=%d sidecar-every=%d", g.files, g.size, g.seed, g.sidecarsEvery)
	// The default layout is left out of the stamp, so that trees generated
	// before --dirs existed are still recognised as cached.
	if g.dirs != defaultDirs {
		s += fmt.Sprintf(" dirs=%s", g.dirs)
	}
	return s
}

// dirLayout is the fan-out of the two directory levels: top directories,
// and leaf directories under each.
type dirLayout struct{ top, leaf int }

// defaultDirs is 16 x 32 = 512 leaf directories (528 below the root).
var defaultDirs = dirLayout{16, 32}

func (d dirLayout) String() string { return fmt.Sprintf("%d,%d", d.top, d.leaf) }

// Set parses "A,B" for flag.Value.
func (d *dirLayout) Set(s string) error {
	var a, b int
	if n, err := fmt.Sscanf(s, "%d,%d", &a, &b); err != nil || n != 2 || a < 1 || b < 1 || a > 100 || b > 100 {
		return fmt.Errorf("want A,B with 1 <= A, B <= 100, got %q", s)
	}
	*d = dirLayout{a, b}
	return nil
}

// path spreads files over two directory levels (top x leaf directories at
// most), so that trees look like sites, not one flat directory. Names are
// two digits wide, hence at most 100 per level.
func (d dirLayout) path(i int) string {
	return fmt.Sprintf("d%02d/e%02d/f%06d.txt", i%d.top, (i/d.top)%d.leaf, i)
}

// relPath is a file's path in the default layout.
func relPath(i int) string { return defaultDirs.path(i) }

// alphabet keeps values printable, so they are plain JSON strings for
// wrangler and identical bytes for every uploader.
const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func fillValue(buf []byte, seed uint64, i int) {
	rng := rand.New(rand.NewPCG(seed, uint64(i)))
	for j := 0; j < len(buf); j += 8 {
		v := rng.Uint64()
		for k := 0; k < 8 && j+k < len(buf); k++ {
			buf[j+k] = alphabet[v&63]
			v >>= 8
		}
	}
}

// cmdGen writes the tree deterministically: the same flags give the same
// bytes. A finished tree is stamped (D + ".done"), and a second call with the
// same flags returns at once.
func cmdGen(args []string) error {
	fl := flag.NewFlagSet("gen", flag.ContinueOnError)
	dir := fl.String("dir", "", "directory to create")
	var g genSpec
	fl.IntVar(&g.files, "files", 0, "number of files")
	fl.IntVar(&g.size, "size", 0, "bytes per file")
	fl.Uint64Var(&g.seed, "seed", 1, "content seed")
	fl.IntVar(&g.sidecarsEvery, "sidecar-every", 0, "give every K-th file a "+sidecarSuffix+" sidecar; 0 = none")
	g.dirs = defaultDirs
	fl.Var(&g.dirs, "dirs", "A,B: A top directories with B leaf directories each (files spread round-robin)")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *dir == "" || g.files <= 0 || g.size < 0 {
		return errors.New("--dir and --files > 0 are required")
	}
	stamp := filepath.Clean(*dir) + ".done"
	if b, err := os.ReadFile(stamp); err == nil && string(b) == g.String() {
		fmt.Printf("tree %s: cached (%s)\n", *dir, g)
		return nil
	}
	os.Remove(stamp)
	if err := os.RemoveAll(*dir); err != nil {
		return err
	}
	start := time.Now()
	jobs := make(chan int, 256)
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	var mkdirMu sync.Mutex
	made := map[string]bool{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, g.size)
			for i := range jobs {
				p := filepath.Join(*dir, filepath.FromSlash(g.dirs.path(i)))
				d := filepath.Dir(p)
				mkdirMu.Lock()
				if !made[d] {
					if err := os.MkdirAll(d, 0o755); err != nil {
						mkdirMu.Unlock()
						sendErr(errc, err)
						continue
					}
					made[d] = true
				}
				mkdirMu.Unlock()
				fillValue(buf, g.seed, i)
				if err := os.WriteFile(p, buf, 0o644); err != nil {
					sendErr(errc, err)
					continue
				}
				if g.sidecarsEvery > 0 && i%g.sidecarsEvery == 0 {
					meta := fmt.Sprintf("{\n  \"n\": %d,\n  \"content-type\": \"text/plain\",\n  \"tree\": %q\n}\n", i, filepath.Base(*dir))
					if err := os.WriteFile(p+sidecarSuffix, []byte(meta), 0o644); err != nil {
						sendErr(errc, err)
					}
				}
			}
		}()
	}
	for i := range g.files {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	if err := os.WriteFile(stamp, []byte(g.String()), 0o644); err != nil {
		return err
	}
	fmt.Printf("tree %s: generated in %s (%s)\n", *dir, time.Since(start).Round(time.Millisecond), g)
	return nil
}

func sendErr(errc chan error, err error) {
	select {
	case errc <- err:
	default:
	}
}

// entry is one file of a tree as kvsync publishes it.
type entry struct {
	key, path, sidecar string
	size               int64
}

// walk lists a tree's files with kvsync's key mapping (relative path with
// "/", no prefix, sidecars attached to their file), sorted by key.
func walk(dir string) ([]entry, error) {
	var out []entry
	sidecars := map[string]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(p, sidecarSuffix) {
			sidecars[p] = true
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		out = append(out, entry{key: filepath.ToSlash(rel), path: p, size: info.Size()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i := range out {
		if sc := out[i].path + sidecarSuffix; sidecars[sc] {
			out[i].sidecar = sc
		}
	}
	slices.SortFunc(out, func(a, b entry) int { return strings.Compare(a.key, b.key) })
	return out, nil
}

func dirFlag(name string, args []string, extra func(*flag.FlagSet)) (string, error) {
	fl := flag.NewFlagSet(name, flag.ContinueOnError)
	dir := fl.String("dir", "", "tree root")
	if extra != nil {
		extra(fl)
	}
	if err := fl.Parse(args); err != nil {
		return "", err
	}
	if *dir == "" {
		return "", errors.New("--dir is required")
	}
	return *dir, nil
}

// cmdTreeInfo prints what a tree should become in KV.
func cmdTreeInfo(args []string) error {
	dir, err := dirFlag("treeinfo", args, nil)
	if err != nil {
		return err
	}
	ents, err := walk(dir)
	if err != nil {
		return err
	}
	var bytes int64
	meta := 0
	for _, e := range ents {
		bytes += e.size
		if e.sidecar != "" {
			meta++
		}
	}
	fmt.Printf("TREE_FILES=%d\nTREE_BYTES=%d\nTREE_SIDECARS=%d\n", len(ents), bytes, meta)
	return nil
}

// cmdPairs writes wrangler's bulk JSON: [{"key","value","metadata"?}].
func cmdPairs(args []string) error {
	var out string
	dir, err := dirFlag("pairs", args, func(fl *flag.FlagSet) { fl.StringVar(&out, "out", "", "output JSON file") })
	if err != nil {
		return err
	}
	ents, err := walk(dir)
	if err != nil {
		return err
	}
	type pair struct {
		Key      string          `json:"key"`
		Value    string          `json:"value"`
		Metadata json.RawMessage `json:"metadata,omitempty"`
	}
	return writeFile(out, 1<<20, func(w *bufio.Writer) error {
		w.WriteString("[")
		for i, e := range ents {
			v, err := os.ReadFile(e.path)
			if err != nil {
				return err
			}
			p := pair{Key: e.key, Value: string(v)}
			if e.sidecar != "" {
				if p.Metadata, err = os.ReadFile(e.sidecar); err != nil {
					return err
				}
			}
			b, err := json.Marshal(p)
			if err != nil {
				return fmt.Errorf("%s: %w", e.path, err)
			}
			if i > 0 {
				w.WriteString(",\n")
			}
			w.Write(b)
		}
		w.WriteString("]\n")
		return nil
	})
}

// cmdFileList writes "escaped-key TAB path TAB sidecar-or-dash" lines for
// the curl loop; the key is escaped once, as one path segment.
func cmdFileList(args []string) error {
	var out string
	dir, err := dirFlag("filelist", args, func(fl *flag.FlagSet) { fl.StringVar(&out, "out", "", "output TSV file") })
	if err != nil {
		return err
	}
	ents, err := walk(dir)
	if err != nil {
		return err
	}
	return writeFile(out, 4096, func(w *bufio.Writer) error {
		for _, e := range ents {
			sc := e.sidecar
			if sc == "" {
				sc = "-"
			}
			if strings.ContainsAny(e.path+sc, "\t\n") {
				return fmt.Errorf("%s: tab or newline in a path", e.path)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", url.PathEscape(e.key), e.path, sc)
		}
		return nil
	})
}

// writeFile creates path and has fill write it through a buffer of size
// bytes; the file is complete only when both fill and the flush succeeded.
func writeFile(path string, size int, fill func(*bufio.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, size)
	if err := fill(w); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cmdMeasure runs a command and records its wall time and the peak RSS
// (ru_maxrss of wait4: the largest resident set of the process or of any
// descendant it waited for) and CPU time. The command's exit status is passed
// through.
func cmdMeasure(args []string) error {
	fl := flag.NewFlagSet("measure", flag.ContinueOnError)
	out := fl.String("out", "", "file to write WALL_S, RSS_KIB and RC to")
	if err := fl.Parse(args); err != nil {
		return err
	}
	argv := fl.Args()
	if len(argv) == 0 || *out == "" {
		return errors.New("usage: measure --out FILE -- command [args...]")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	// The child gets SIGINT/SIGTERM itself (same process group); benchtool
	// waits for it instead of dying first and losing the measurement.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	rc := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return err
		}
		rc = ee.ExitCode()
		if rc < 0 {
			rc = 128
		}
	}
	rss := int64(0)
	// CPU time (user + system) of the process and the descendants it waited
	// for: its own work, apart from the time it spent waiting on a server or
	// a rate limiter, or for a core on a shared machine.
	cpu := 0.0
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss // KiB on Linux
		cpu = time.Duration(syscall.TimevalToNsec(ru.Utime) + syscall.TimevalToNsec(ru.Stime)).Seconds()
	}
	rec := fmt.Sprintf("WALL_S=%.3f\nRSS_KIB=%d\nCPU_S=%.3f\nRC=%d\n", wall.Seconds(), rss, cpu, rc)
	if err := os.WriteFile(*out, []byte(rec), 0o644); err != nil {
		return err
	}
	if rc != 0 {
		return exitError(rc)
	}
	return nil
}

// stats mirrors the emulator's GET /__emulator/stats body.
type stats struct {
	Requests []struct {
		Op     string `json:"op"`
		Status int    `json:"status"`
		Count  int    `json:"count"`
	} `json:"requests"`
	Total       int `json:"total"`
	Writes      int `json:"writes"`
	RateLimited int `json:"rate_limited"`
	Namespace   *struct {
		Keys         int   `json:"keys"`
		ValueBytes   int64 `json:"value_bytes"`
		MetadataKeys int   `json:"metadata_keys"`
	} `json:"namespace"`
}

// cmdStats reads the emulator's counters and prints them, minus those of
// --before when given, so one emulator can serve several scenarios.
func cmdStats(args []string) error {
	fl := flag.NewFlagSet("stats", flag.ContinueOnError)
	u := fl.String("url", "", "the emulator's stats URL (http://127.0.0.1:PORT/__emulator/stats)")
	account := fl.String("account", "", "account id of --namespace")
	ns := fl.String("namespace", "", "namespace to count keys of")
	save := fl.String("save", "", "file to save the raw stats in")
	before := fl.String("before", "", "raw stats saved earlier; print the difference")
	if err := fl.Parse(args); err != nil {
		return err
	}
	q := url.Values{}
	if *account != "" && *ns != "" {
		q.Set("account", *account)
		q.Set("namespace", *ns)
	}
	full := *u
	if len(q) > 0 {
		full += "?" + q.Encode()
	}
	req, err := http.NewRequest(http.MethodGet, full, nil)
	if err != nil {
		return err
	}
	// The stats endpoint needs the emulator's credentials; an emulator
	// without a token accepts any, so a placeholder serves then.
	tok := os.Getenv("KVSYNC_EMULATOR_TOKEN")
	if tok == "" {
		tok = "benchtool"
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", full, resp.Status, raw)
	}
	var now stats
	if err := json.Unmarshal(raw, &now); err != nil {
		return fmt.Errorf("GET %s: %w", full, err)
	}
	if *save != "" {
		if err := os.WriteFile(*save, raw, 0o644); err != nil {
			return err
		}
	}
	var base stats
	if *before != "" {
		b, err := os.ReadFile(*before)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &base); err != nil {
			return fmt.Errorf("%s: %w", *before, err)
		}
	}
	bulk, lists := 0, 0
	for _, r := range now.Requests {
		switch r.Op {
		case "bulk_put":
			bulk += r.Count
		case "list":
			lists += r.Count
		}
	}
	for _, r := range base.Requests {
		switch r.Op {
		case "bulk_put":
			bulk -= r.Count
		case "list":
			lists -= r.Count
		}
	}
	fmt.Printf("REQUESTS=%d\nWRITES=%d\nBULK_WRITES=%d\nLISTS=%d\nR429=%d\n", now.Total-base.Total, now.Writes-base.Writes, bulk, lists, now.RateLimited-base.RateLimited)
	if now.Namespace != nil {
		fmt.Printf("KEYS=%d\nVALUE_BYTES=%d\nMETA_KEYS=%d\n", now.Namespace.Keys, now.Namespace.ValueBytes, now.Namespace.MetadataKeys)
	}
	return nil
}

// cmdFreePort prints a TCP port that was free on 127.0.0.1 a moment ago, for
// a server that must be given a fixed address (kvsync run's --metrics-listen,
// polled for /readyz). Another process could take it in between; on this
// loopback-only benchmark that is unlikely, and the server then fails loudly.
func cmdFreePort(args []string) error {
	if len(args) != 0 {
		return errors.New("usage: freeport")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return err
	}
	fmt.Println(port)
	return nil
}
