package watcher

// The rules of what a tree publishes have one owner, this package: a scan
// and the events apply them through pathSkip and dirSkip. Publishes and
// Descends expose the same rules to callers that must know in advance what a
// tree would publish (the configuration check that keeps kvsync's own
// secrets and state out of KV), so those callers never restate them.

// Publishes reports whether a regular file at rel, a "/"-separated path
// relative to Root, reaches KV under o's include and exclude globs, hidden
// path and debris rules: as a key, or, for a sidecar, as the metadata of its
// file's key. It reads nothing from the filesystem, so it answers for files
// that do not exist yet, and it does not apply what only a file's content or
// kind decides (its size, a symlink's target).
func (o *Options) Publishes(rel string) bool {
	if rel == "" || rel == "." {
		return false
	}
	return o.pathSkip(sidecarOwner(rel)) == ""
}

// Descends reports whether a scan enters the directory rel ("" or "." for
// Root) and watches it. When it does not, because the directory or one of its
// ancestors is excluded or hidden, nothing below it is published, whatever
// the names of the files that appear there later.
func (o *Options) Descends(rel string) bool {
	if rel == "" || rel == "." {
		return true
	}
	for i := 0; i < len(rel); i++ {
		if rel[i] == '/' && o.dirSkip(rel[:i]) != "" {
			return false
		}
	}
	return o.dirSkip(rel) == ""
}
