#!/usr/bin/env bash
# Builds the package for amd64 and arm64 (build-deb.sh) and runs Debian's
# lintian on both: any error or warning fails, after the reasoned overrides
# in deploy/debian/lintian-overrides; info and pedantic tags are shown.
#
#   deploy/debian/lintian.sh [DEB...]    check these packages instead
#
# Installs lintian from Debian when it is missing (needs root and apt).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { printf 'lintian.sh: %s\n' "$*" >&2; }

if ! command -v lintian >/dev/null; then
	log "installing lintian from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends lintian >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends lintian >/dev/null; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ $# -gt 0 ]; then
	debs=("$@")
else
	mapfile -t debs < <(bash "$here/build-deb.sh" -o "$tmp" amd64 arm64)
	[ "${#debs[@]}" -eq 2 ] || { log "FAIL: build-deb.sh made ${#debs[@]} packages, want 2"; exit 1; }
fi

lintian --version
# --fail-on makes the exit status say what the brief asks for; without it
# bookworm's lintian exits 0 on warnings.
lintian --info --display-info --pedantic --fail-on error,warning "${debs[@]}"
log "OK: no errors or warnings in ${debs[*]##*/}"
