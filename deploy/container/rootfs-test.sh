#!/usr/bin/env bash
# Proves, without any container engine, what deploy/container/Dockerfile
# promises of the binary it copies: it is static and runs as uid 65532 in a
# root filesystem holding nothing but what the distroless image holds,
# writing nowhere but its state directory. (image-test.sh builds and runs
# the image itself under podman.)
#
#   1. Build kvsync exactly as `make build` does for the Dockerfile
#      (CGO_ENABLED=0, -trimpath, -s -w, version stamped with
#      -X main.version) and check the result is
#      static: no PT_INTERP program header (readelf, or Go's debug/elf when
#      binutils is absent), CGO_ENABLED=0 and -trimpath in its build info,
#      and `kvsync version` prints the stamped version.
#   2. Make an otherwise empty root: /kvsync, /etc/ssl/certs/ca-certificates.crt
#      (as distroless ships), /etc/kvsync/kvsync.yaml (deploy/container/kvsync.yaml),
#      a small tree at /data, and /var/lib/kvsync owned by 65532 (the volume).
#      Everything else is owned by root and not writable by 65532, which is
#      what a read-only root filesystem means to that user.
#   3. Start `kvsync emulator` on the host (outside the root, loopback, a
#      kernel-chosen port), then run `kvsync sync` twice inside the root with
#      chroot --userspec=65532:65532, pointing it at the emulator through
#      CLOUDFLARE_API_BASE_URL / CLOUDFLARE_API_TOKEN (the first pass uploads,
#      the second reopens the state database and must write nothing).
#   4. Check with curl against the emulator's REST API: the key list is exactly
#      the expected keys, every value is byte-identical to its file, the
#      sidecar's metadata arrived and the sidecar itself was not uploaded; and
#      nothing was written in the root outside /var/lib/kvsync.
#
# Needs root (for chroot and chown); not root, it falls back to
# `unshare --map-root-user --root`, which cannot switch to uid 65532. Set
# KVSYNC_STATIC_BIN to reuse a binary built the same way. Exits non-zero on
# any failure; cleans up after itself.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../emulator.sh
. "$here/../emulator.sh"
repo=$(cd "$here/../.." && pwd)
uid=65532
version=${KVSYNC_VERSION:-rootfs-test}
token=rootfs-test-token

log() { printf 'rootfs-test.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

tmp=$(mktemp -d)
emu_pid=
cleanup() {
	if [ -n "$emu_pid" ]; then kill "$emu_pid" 2>/dev/null || true; wait "$emu_pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT
chmod 0755 "$tmp"

for c in curl cmp; do command -v "$c" >/dev/null || die "$c is required"; done

# --- 1. the binary ----------------------------------------------------------
if [ -n "${KVSYNC_STATIC_BIN:-}" ]; then
	cp "$KVSYNC_STATIC_BIN" "$tmp/kvsync"
else
	log "building the static binary as make build does"
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$tmp/kvsync" ./cmd/kvsync) ||
		die "go build ./cmd/kvsync failed"
fi
bin=$tmp/kvsync

if command -v readelf >/dev/null; then
	hdrs=$(readelf -lW "$bin") || die "readelf cannot read $bin"
	grep -q 'LOAD' <<<"$hdrs" || die "readelf shows no LOAD segments: not an ELF executable?"
	if grep -q 'INTERP' <<<"$hdrs"; then die "$bin has a PT_INTERP header: it is dynamically linked"; fi
else
	mkdir "$tmp/elfcheck"
	cat >"$tmp/elfcheck/main.go" <<'EOF'
// Fails when the ELF file named by os.Args[1] asks for a dynamic loader.
package main

import (
	"debug/elf"
	"fmt"
	"os"
)

func main() {
	f, err := elf.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			fmt.Fprintln(os.Stderr, "PT_INTERP present: dynamically linked")
			os.Exit(1)
		}
	}
}
EOF
	(cd "$tmp/elfcheck" && GO111MODULE=off go run main.go "$bin") || die "$bin is not static"
fi
info=$(go version -m "$bin") || die "go version -m cannot read $bin"
grep -Eq '^[[:space:]]+build[[:space:]]+CGO_ENABLED=0$' <<<"$info" || die "build info lacks CGO_ENABLED=0"
grep -Eq '^[[:space:]]+build[[:space:]]+-trimpath=true$' <<<"$info" || die "build info lacks -trimpath=true"
got=$("$bin" version) || die "kvsync version failed"
case $got in
"kvsync ${version} "*) ;;
*) [ -n "${KVSYNC_STATIC_BIN:-}" ] || die "kvsync version printed '$got', want the stamped '$version'" ;;
esac
log "static binary OK: $got"

# --- 2. the root ------------------------------------------------------------
root=$tmp/root
install -d -m 0755 "$root" "$root/etc" "$root/etc/ssl" "$root/etc/ssl/certs" "$root/etc/kvsync" "$root/var" "$root/var/lib" "$root/data"
install -m 0755 "$bin" "$root/kvsync"
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || die "$ca is missing (Debian package ca-certificates)"
install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0644 "$here/kvsync.yaml" "$root/etc/kvsync/kvsync.yaml"
install -d -m 0700 -o "$uid" -g "$uid" "$root/var/lib/kvsync" 2>/dev/null || install -d -m 0700 "$root/var/lib/kvsync"

install -d -m 0755 "$root/data/css" "$root/data/docs"
printf '<!doctype html>\n<title>kvsync</title>\n<h1>published from a read-only root</h1>\n' >"$root/data/index.html"
printf '{"content_type":"text/html; charset=utf-8","owner":"rootfs-test"}\n' >"$root/data/index.html.meta.json"
printf 'body { font-family: sans-serif; }\n' >"$root/data/css/site.css"
head -c 70000 /dev/urandom >"$root/data/docs/blob.bin"
printf 'not published: hidden files are excluded by default\n' >"$root/data/.hidden"
chmod 0644 "$root"/data/*.* "$root"/data/*/* "$root/data/.hidden"
expected_keys=$'css/site.css\ndocs/blob.bin\nindex.html'

# Which account and namespace the config names: the keys land there.
account=$(sed -n 's/^[[:space:]]*account_id:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\).*/\1/p' "$here/kvsync.yaml" | head -n1)
namespace=$(sed -n 's/^[[:space:]]*namespace_id:[[:space:]]*"\{0,1\}\([^"#[:space:]]*\).*/\1/p' "$here/kvsync.yaml" | head -n1)
[ -n "$account" ] && [ -n "$namespace" ] || die "cannot read account_id/namespace_id from $here/kvsync.yaml"
grep -Eq '^[[:space:]]*dir:[[:space:]]*/data[[:space:]]*$' "$here/kvsync.yaml" || die "$here/kvsync.yaml must sync dir /data"

touch "$tmp/stamp"
sleep 1 # mtime granularity: anything written after the stamp is newer

# --- 3. emulator on the host, kvsync in the root ---------------------------
start_emulator "$bin" "$token" "$tmp"
log "emulator at $base"

chroot_bin=$(command -v chroot) || die "chroot not found"
in_root() {
	if [ "$(id -u)" -eq 0 ]; then
		env -i CLOUDFLARE_API_TOKEN="$token" CLOUDFLARE_API_BASE_URL="$base" \
			"$chroot_bin" --userspec="$uid:$uid" "$root" "$@"
	else
		env -i CLOUDFLARE_API_TOKEN="$token" CLOUDFLARE_API_BASE_URL="$base" \
			unshare --map-root-user --root="$root" "$@"
	fi
}
[ "$(id -u)" -eq 0 ] || log "not root: running as mapped root via unshare (uid $uid not exercised)"
for pass in 1 2; do
	if ! in_root /kvsync sync --config /etc/kvsync/kvsync.yaml --metrics-listen 127.0.0.1:0 --log-format text >"$tmp/sync$pass.log" 2>&1; then
		cat "$tmp/sync$pass.log" >&2
		die "kvsync sync (pass $pass) failed inside the root"
	fi
	log "sync pass $pass OK"
done
# The second pass must find everything in the state database the first one
# wrote under the read-only root, and rewrite nothing.
grep -q 'msg="full sync finished".* written=0 unchanged=3 ' "$tmp/sync2.log" ||
	{ cat "$tmp/sync2.log" >&2; die "the second pass did not find all 3 keys unchanged in the state database"; }

# --- 4. what arrived --------------------------------------------------------
api=$base/accounts/$account/storage/kv/namespaces/$namespace
auth=(-H "Authorization: Bearer $token")
list=$(curl -fsS "${auth[@]}" "$api/keys") || die "listing keys failed"
keys=$(printf '%s' "$list" | grep -o '"name":[[:space:]]*"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | LC_ALL=C sort)
[ "$keys" = "$expected_keys" ] || die "keys in KV: [$(echo $keys)], want [$(echo $expected_keys)]"
for k in $expected_keys; do
	enc=${k//\//%2F}
	curl -fsS "${auth[@]}" -o "$tmp/got" "$api/values/$enc" || die "GET value $k failed"
	cmp -s "$tmp/got" "$root/data/$k" || die "value of $k differs from /data/$k"
done
meta=$(curl -fsS "${auth[@]}" "$api/metadata/index.html") || die "GET metadata index.html failed"
grep -q '"owner":[[:space:]]*"rootfs-test"' <<<"$meta" || die "index.html metadata is not the sidecar's: $meta"
log "KV holds exactly: $(echo $keys); values and metadata match"

# Nothing but the state directory may have been written (a read-only root).
written=$(cd "$root" && find . -newer "$tmp/stamp" ! -path './var/lib/kvsync' ! -path './var/lib/kvsync/*' -print)
[ -z "$written" ] || die "kvsync wrote outside /var/lib/kvsync: $written"
[ -n "$(ls -A "$root/var/lib/kvsync")" ] || die "kvsync wrote no state under /var/lib/kvsync"
if [ "$(id -u)" -eq 0 ]; then
	owners=$(find "$root/var/lib/kvsync" ! -uid "$uid" -print)
	[ -z "$owners" ] || die "state files not owned by $uid: $owners"
fi
log "OK"
