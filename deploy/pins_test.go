package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var (
	// A base or app image is named by tag for people and pinned by digest
	// for machines: a tag can be pushed again, a digest cannot.
	pinnedImage = regexp.MustCompile(`^[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)
	// kvsync's own image is built from this repository, never pulled.
	localImage = regexp.MustCompile(`^kvsync(:[A-Za-z0-9._-]+)?$`)
	fromLine   = regexp.MustCompile(`(?m)^FROM\s+(\S+)`)
	// A Dockerfile ARG with its default, declared before the first FROM,
	// where a FROM can use it.
	argLine   = regexp.MustCompile(`(?m)^ARG\s+([A-Za-z_][A-Za-z0-9_]*)=(\S+)`)
	imageLine = regexp.MustCompile(`(?m)^\s*-?\s*image:\s*(\S+)`)
	// go install/go run of a module at a version: the version must be a
	// release tag, a full commit hash, or a variable that the example sets.
	goFetch   = regexp.MustCompile(`go (?:install|run) (\S+@\S+)`)
	pinnedRef = regexp.MustCompile(`@(v\d+\.\d+\.\d+|[0-9a-f]{40}|\$\{[A-Z_]+\})$`)
	// A moving reference attached to a name (prose may mention "@latest").
	movingRef = regexp.MustCompile(`[\w./-]+(?:@latest|@master|@main|:latest)\b`)
)

// TestImagesPinnedByDigest: every image the Dockerfile builds on and every
// image the Kubernetes example pulls carries a digest beside its tag.
func TestImagesPinnedByDigest(t *testing.T) {
	check := func(file string, re *regexp.Regexp) {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		// FROM ${BASE} is checked as the default it builds from: a build
		// argument may substitute a local image (CI), never leave the
		// shipped default unpinned.
		args := map[string]string{}
		if i := fromLine.FindStringIndex(text); i != nil {
			for _, m := range argLine.FindAllStringSubmatch(text[:i[0]], -1) {
				args[m[1]] = m[2]
			}
		}
		refs := re.FindAllStringSubmatch(text, -1)
		if len(refs) == 0 {
			t.Fatalf("%s: no image references found: the test no longer reads it", file)
		}
		for _, m := range refs {
			ref := os.Expand(m[1], func(name string) string { return args[name] })
			if localImage.MatchString(ref) {
				continue
			}
			if !pinnedImage.MatchString(ref) {
				t.Errorf("%s: image %s is not pinned as tag@sha256:digest", file, ref)
			}
		}
	}
	check(filepath.Join("container", "Dockerfile"), fromLine)
	manifests, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range manifests {
		if b, _ := os.ReadFile(m); imageLine.Match(b) {
			check(m, imageLine)
		}
	}
}

// TestDocsPinVersions: the READMEs never tell a user to fetch a moving
// version of anything they then hand a token to.
func TestDocsPinVersions(t *testing.T) {
	docs := []string{filepath.Join("..", "README.md")}
	more, err := filepath.Glob(filepath.Join("*", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, more...)
	for _, d := range docs {
		b, err := os.ReadFile(d)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		for _, m := range movingRef.FindAllString(text, -1) {
			t.Errorf("%s names %s: pin a release tag or a commit instead", d, m)
		}
		for _, m := range goFetch.FindAllStringSubmatch(text, -1) {
			if !pinnedRef.MatchString(m[1]) {
				t.Errorf("%s: go install/run of %s is not pinned to a tag or a full commit", d, m[1])
			}
		}
	}
}
