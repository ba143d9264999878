#!/usr/bin/env bash
# `make dist`: the release files, into DIR (default dist/):
#
#   kvsync_<version>_linux_amd64, kvsync_<version>_linux_arm64
#                               static binaries, built as `make build` builds
#                               (plus -buildvcs=false)
#   kvsync_<debversion>_amd64.deb, kvsync_<debversion>_arm64.deb
#                               those same binaries, packaged by build-deb.sh
#   SHA256SUMS                  of all of the above, for `sha256sum -c`
#
# Reproducible: two runs from the same commit with the same Go release give
# identical bytes whatever the checkout path, umask, time zone or build cache
# (deploy/debian/dist-test.sh checks it). -trimpath drops the checkout path,
# -buildvcs=false keeps git's view of the checkout out of the binary (one
# untracked file would stamp it "modified"), and every timestamp in a package is SOURCE_DATE_EPOCH, the
# commit's time unless set.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export VERSION SOURCE_DATE_EPOCH LC_ALL=C TZ=UTC
umask 022

# Files of an earlier `make dist` must not end up in this one's SHA256SUMS.
rm -f "$out"/kvsync_* "$out/SHA256SUMS"

for arch in amd64 arm64; do
	bin=$out/kvsync_${VERSION}_linux_$arch
	# The baseline instruction set runs on every CPU of the architecture, and
	# pinning it (and clearing GOFLAGS, GOEXPERIMENT) keeps the builder's
	# environment out of the bytes.
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOAMD64=v1 GOARM64=v8.0 GOFLAGS= GOEXPERIMENT= go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION" -o "$bin" ./cmd/kvsync
	chmod 0755 "$bin"
	bash "$here/build-deb.sh" -o "$out" -b "$bin" "$arch" >/dev/null
done

(cd "$out" && find . -maxdepth 1 -type f -name 'kvsync_*' -printf '%P\n' | sort | xargs sha256sum) >"$out/SHA256SUMS.tmp"
mv "$out/SHA256SUMS.tmp" "$out/SHA256SUMS"
chmod 0644 "$out/SHA256SUMS" "$out"/kvsync_*.deb
(cd "$out" && ls -l kvsync_* SHA256SUMS)
