#!/usr/bin/env bash
# Proves `make dist` reproducible: builds it twice from the same commit and
# fails unless both give the same files, byte for byte.
#
# The two builds differ in everything a release build must not depend on:
# each runs from its own clone at a different path (and depth), into its own
# output directory, with a different umask and time zone, and the second with
# an empty Go build cache, so nothing is shared but the module cache (which Go
# verifies against go.sum), and with GOAMD64 and GOFLAGS set as a builder's
# environment might have them. Both build HEAD as committed; uncommitted changes
# are not part of a release.
#
# Exit status: 0 identical, 1 different or a build failed. Takes one full
# build of both architectures with a cold cache, on top of a warm one.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { printf 'dist-test.sh: %s\n' "$*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

build() {
	local src=$1 out=$2 mask=$3 zone=$4
	shift 4
	git clone --quiet "$repo" "$src"
	(cd "$src" && umask "$mask" && env TZ="$zone" "$@" make --no-print-directory dist DIST="$out" >/dev/null)
}

log "build 1: $tmp/a"
build "$tmp/a/kvsync" "$tmp/out-a" 022 UTC
log "build 2: $tmp/b, umask 077, cold build cache, GOAMD64=v3 GOFLAGS=-buildvcs=true in the environment"
build "$tmp/b/second/clone" "$tmp/b/out" 077 Pacific/Chatham GOCACHE="$tmp/b/gocache" GOAMD64=v3 GOFLAGS=-buildvcs=true

a=$(cd "$tmp/out-a" && find . -type f | sort)
b=$(cd "$tmp/b/out" && find . -type f | sort)
# Not vacuous: both made the two binaries, the two packages and the sums.
for want in _linux_amd64 _linux_arm64 _amd64.deb _arm64.deb; do
	grep -q -- "${want}\$" <<<"$a" || { log "FAIL: build 1 made no kvsync_*$want"; exit 1; }
done
grep -qx './SHA256SUMS' <<<"$a" || { log "FAIL: build 1 made no SHA256SUMS"; exit 1; }
[ "$(wc -l <<<"$a")" -eq 5 ] || { log "FAIL: build 1 made other files too: $(tr '\n' ' ' <<<"$a")"; exit 1; }
if [ "$a" != "$b" ]; then
	log "FAIL: the builds made different files:"
	diff <(echo "$a") <(echo "$b") >&2 || true
	exit 1
fi
(cd "$tmp/out-a" && sha256sum -c --quiet SHA256SUMS) || { log "FAIL: SHA256SUMS does not match build 1's files"; exit 1; }

failed=0
while read -r f; do
	if cmp -s "$tmp/out-a/$f" "$tmp/b/out/$f"; then
		log "identical: ${f#./} ($(sha256sum <"$tmp/out-a/$f" | cut -c1-16))"
	else
		log "FAIL: ${f#./} differs between the builds"
		failed=1
	fi
done <<<"$a"
[ "$failed" -eq 0 ] || exit 1
log "OK: make dist is reproducible"
