package main

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kvsync/kvsync/internal/config"
	"github.com/kvsync/kvsync/watcher"
)

// ownPath is a file or directory of kvsync's own that must never be
// published: a secret, the state, or the config itself.
type ownPath struct {
	path  string
	field string        // the config field that names it, for the message
	src   config.Source // where that field was set
	isDir bool
	// what says what publishing it would leak or cause.
	what string
}

// checkOwnFilesUnpublished refuses a configuration under which a sync would
// publish kvsync's own files: the state directory (the database as keys,
// and, since kvsync watches its own writes there, an endless write loop),
// the API token file (read by kvsync, or systemd's credential when it
// would be read), the CA bundle, or the config file. A path is allowed
// inside a sync's dir only when that sync's own rules (globs, hidden paths,
// debris) keep it out, as decided by the watcher, which owns those rules;
// the state directory must not even be descended, since the names of what
// kvsync writes there are not fixed.
//
// Paths are compared as given and with symlinks resolved, so neither a
// symlinked dir nor a symlinked state_dir hides the overlap; a path that
// does not exist yet is resolved as far as it exists. configFile is the
// --config path, "" for none; local means --local, where no credential is
// read.
func checkOwnFilesUnpublished(cfg *config.Config, configFile string, getenv func(string) string, local bool) error {
	var own []ownPath
	stateSrc, stateSet := cfg.SourceOf("state_dir")
	stateField := "state_dir"
	if !stateSet {
		stateField = "state_dir (the default)"
	}
	own = append(own, ownPath{path: cfg.StateDir, field: stateField, src: stateSrc, isDir: true,
		what: "kvsync would publish its own state database as keys and, watching its own writes, rewrite them without end"})
	credEnv := getenv
	if local {
		// --local reads no credential; a configured token file is still a
		// secret in the tree.
		credEnv = nil
	}
	for _, tf := range cfg.TokenFiles(credEnv) {
		own = append(own, ownPath{path: tf.Path, field: tf.Field, src: tf.Source, what: "the API token would be published"})
	}
	if cfg.API.CAFile != "" {
		src, _ := cfg.SourceOf("api.ca_file")
		own = append(own, ownPath{path: cfg.API.CAFile, field: "api.ca_file", src: src, what: "the trusted CA bundle would be published"})
	}

	quiet := slog.New(slog.DiscardHandler)
	var errs []error
	for i, s := range cfg.Syncs {
		dirField := fmt.Sprintf("syncs[%d].dir", i)
		dirSrc, _ := cfg.SourceOf(dirField)
		opts := watcherOptions(s, quiet, nil)
		publishes := func(p ownPath, rel string) bool {
			if p.isDir {
				return opts.Descends(rel)
			}
			return opts.Publishes(rel)
		}
		for _, p := range own {
			rels, shown := inside(s.Dir, p.path)
			k := slices.IndexFunc(rels, func(rel string) bool { return publishes(p, rel) })
			if k < 0 {
				continue
			}
			rel := rels[k]
			errs = append(errs, &config.FieldError{Source: p.src, Field: p.field, Kind: config.ErrInsideTree,
				Msg: fmt.Sprintf("%s is inside %s %s (%s): %s%s; %s",
					shown, dirField, s.Dir, sourceText(dirSrc), p.what, asKey(s, rel, p.isDir), remedy(i, rel))})
		}
		if configFile == "" {
			continue
		}
		abs, err := filepath.Abs(configFile)
		if err != nil {
			continue
		}
		rels, shown := inside(s.Dir, abs)
		if j := slices.IndexFunc(rels, opts.Publishes); j >= 0 {
			rel := rels[j]
			errs = append(errs, &config.FieldError{Source: dirSrc, Field: dirField, Kind: config.ErrInsideTree,
				Msg: fmt.Sprintf("%s holds the config file %s (--config): it would be published%s; %s",
					s.Dir, shown, asKey(s, rel, false), remedy(i, rel))})
		}
	}
	return errors.Join(errs...)
}

// inside returns the "/"-separated paths relative to dir under which p
// lies in dir ("." for dir itself), none when it does not, comparing the
// paths with symlinks resolved and as given: a link inside the tree can make
// one file reachable under two names, and a scan publishes both. shown names
// p in a message.
func inside(dir, p string) (rels []string, shown string) {
	dir, p = filepath.Clean(dir), filepath.Clean(p)
	realDir, realP := resolveExisting(dir), resolveExisting(p)
	shown = p
	if realP != p {
		shown = fmt.Sprintf("%s (%s once symlinks are resolved)", p, realP)
	}
	for _, pair := range [][2]string{{realDir, realP}, {dir, p}} {
		r, err := filepath.Rel(pair[0], pair[1])
		if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
			continue
		}
		if r = filepath.ToSlash(r); len(rels) == 0 || rels[0] != r {
			rels = append(rels, r)
		}
	}
	return rels, shown
}

// resolveExisting resolves the symlinks of the longest part of the absolute
// path p that exists and appends the rest unchanged: a state directory not
// yet created still compares as where it will be.
func resolveExisting(p string) string {
	rest := ""
	for cur := p; ; {
		if r, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(r, rest)
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return p
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

func sourceText(s config.Source) string {
	if t := s.String(); t != "" {
		return t
	}
	return "default"
}

// asKey names the key a file would become.
func asKey(s config.Sync, rel string, isDir bool) string {
	if isDir || rel == "." {
		return ""
	}
	if key, err := watcher.KeyFor(s.Prefix, rel); err == nil {
		return fmt.Sprintf(" as key %q", key)
	}
	return ""
}

// remedy says how to keep rel out of syncs[i]: move it, or exclude it by
// the glob that matches exactly it (for a directory, the directory, so the
// scan does not enter it).
func remedy(i int, rel string) string {
	if rel == "." {
		return "move it out of the tree"
	}
	return fmt.Sprintf("move it out of the tree, or exclude it with syncs[%d].exclude: [%q]", i, globEscape(rel))
}

// globEscape quotes the glob metacharacters of a path, so that the pattern
// matches that one path.
func globEscape(rel string) string {
	var b strings.Builder
	for _, r := range rel {
		if strings.ContainsRune(`*?[]{}\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
