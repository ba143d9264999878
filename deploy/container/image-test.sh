#!/usr/bin/env bash
# Builds deploy/container/Dockerfile with `make image` and runs the image
# under podman as a user would, against `kvsync emulator` on the host.
#
#   build    a local stand-in for the distroless base (podman.sh: base_image),
#            then `make image BASE=<it>`: the shipped Dockerfile, only BASE
#            substituted
#   inspect  OCI labels (version = the stamped version), user 65532, entry
#            point and command, STATE_DIRECTORY, volume, port; size under
#            MAX_IMAGE_BYTES; the base's layers plus exactly two; the
#            image's /var/lib/kvsync empty and owned by 65532
#   run      `podman run --read-only --user 65532:65532 --cap-drop=all`, the
#            tree bind-mounted read-only, the state on a named volume,
#            --network host to reach the emulator on 127.0.0.1, the image's
#            own CMD reading the shipped kvsync.yaml (only metrics_listen
#            moved to a free loopback port, since the host's network is
#            shared): ready, every key and value in the emulator, a file
#            added later published, no capability; --read-only-tmpfs=false
#            as well, so kvsync gets no writable /tmp, /var/tmp or /run
#            either (readOnlyRootFilesystem adds none)
#   stop     `podman stop -t 45` (SIGTERM) ends it with exit status 0 well
#            within the 30 s drain timeout
#   restart  a new container on a NEW, empty state volume: once ready, the
#            emulator counted no write request (the namespace, not the local
#            state, says what is published: issue 13)
#   flags    `sync --dir /data --account-id ... --namespace-id ...
#            --api-base-url ...` with no config on the read-only root: the
#            state goes to the volume through the image's STATE_DIRECTORY;
#            the same run with STATE_DIRECTORY emptied must fail, so the
#            check proves the variable is what makes it work
#
# Every check runs; the exit status is 1 if any failed. Needs root (podman
# with its storage under a temporary directory, see podman.sh). Set
# KVSYNC_STATIC_BIN to run the emulator from an existing build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../emulator.sh
. "$here/../emulator.sh"
# shellcheck source=podman.sh
. "$here/podman.sh"

version=${KVSYNC_VERSION:-image-test}
image=localhost/kvsync:$version
base_ref=localhost/kvsync-base:test
token=image-test-$$-$RANDOM$RANDOM
uid=65532
# The binary is about 31 MB since leader election brought in k8s.io/client-go
# (about 35 more modules: API types, codecs, the REST client; it was 11 MB
# before), and distroless static adds about 2 MB. Measured: 31,448,268 bytes
# over podman.sh's stand-in base; the bound is that plus about 15 %, room
# for growth but far below anything that drags in a distribution.
max_image_bytes=${MAX_IMAGE_BYTES:-36000000}

log() { printf 'image-test.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
failures=()
fail() { log "FAIL: $*"; failures+=("$*"); }

[ "$(id -u)" -eq 0 ] || die "needs root (podman storage, containers as uid $uid)"
for c in curl cmp tar; do command -v "$c" >/dev/null || die "$c is required"; done

podman_scratch

# --- build --------------------------------------------------------------------
base_image "$base_ref"
start=$SECONDS
(cd "$repo" && make --no-print-directory image VERSION="$version" BASE="$base_ref" IMAGE="$image" BUILDER=podman >"$tmp/build.log" 2>&1) ||
	{ cat "$tmp/build.log" >&2; die "make image failed"; }
log "make image: $image in $((SECONDS - start))s"
bin=${KVSYNC_STATIC_BIN:-$repo/bin/kvsync}

# --- inspect ------------------------------------------------------------------
insp() { podman image inspect --format "$1" "$2"; }
label() { insp "{{index .Config.Labels \"$1\"}}" "$image"; }
[ "$(label org.opencontainers.image.version)" = "$version" ] || fail "label version is '$(label org.opencontainers.image.version)', want $version"
[ "$(label org.opencontainers.image.title)" = kvsync ] || fail "label title is '$(label org.opencontainers.image.title)'"
[ "$(label org.opencontainers.image.source)" = https://github.com/kvsync/kvsync ] || fail "label source is '$(label org.opencontainers.image.source)'"
[ -n "$(label org.opencontainers.image.description)" ] || fail "no description label"
[ "$(insp '{{.Config.User}}' "$image")" = "$uid:$uid" ] || fail "user is $(insp '{{.Config.User}}' "$image")"
[ "$(insp '{{json .Config.Entrypoint}}' "$image")" = '["/kvsync"]' ] || fail "entrypoint $(insp '{{json .Config.Entrypoint}}' "$image")"
[ "$(insp '{{json .Config.Cmd}}' "$image")" = '["run","--config","/etc/kvsync/kvsync.yaml"]' ] || fail "cmd $(insp '{{json .Config.Cmd}}' "$image")"
insp '{{json .Config.Env}}' "$image" | grep '"STATE_DIRECTORY=/var/lib/kvsync"' >/dev/null || fail "no STATE_DIRECTORY=/var/lib/kvsync in $(insp '{{json .Config.Env}}' "$image")"
insp '{{json .Config.Volumes}}' "$image" | grep '"/var/lib/kvsync"' >/dev/null || fail "/var/lib/kvsync is not a volume"
insp '{{json .Config.ExposedPorts}}' "$image" | grep '"9464/tcp"' >/dev/null || fail "9464/tcp is not exposed"
size=$(insp '{{.Size}}' "$image")
[ "$size" -le "$max_image_bytes" ] || fail "image is $size bytes, over $max_image_bytes"
base_layers=$(insp '{{len .RootFS.Layers}}' "$base_ref")
layers=$(insp '{{len .RootFS.Layers}}' "$image")
# One layer for the binary, one for the state directory: anything more is
# something the Dockerfile gained without this test knowing.
[ "$layers" -eq $((base_layers + 2)) ] || fail "image has $layers layers, want the base's $base_layers + 2"
mnt=$(podman image mount "$image") || die "podman image mount failed"
[ "$(stat -c '%u:%g' "$mnt/var/lib/kvsync")" = "$uid:$uid" ] || fail "/var/lib/kvsync in the image is $(stat -c '%u:%g' "$mnt/var/lib/kvsync")"
[ -z "$(ls -A "$mnt/var/lib/kvsync")" ] || fail "/var/lib/kvsync in the image is not empty: $(ls -A "$mnt/var/lib/kvsync")"
[ "$(stat -c '%u' "$mnt/var/lib")" = 0 ] || fail "/var/lib in the image is not root's"
cmp -s "$mnt/kvsync" "$repo/bin/kvsync" || fail "/kvsync in the image is not bin/kvsync"
podman image unmount "$image" >/dev/null
log "inspect: $size bytes, $layers layers (base $base_layers), labels version=$version"

# --- emulator, tree, config ---------------------------------------------------
start_emulator "$bin" "$token" "$tmp"
account=$(sed -n 's/^[[:space:]]*account_id:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$here/kvsync.yaml" | head -n1)
namespace=$(sed -n 's/^[[:space:]]*namespace_id:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$here/kvsync.yaml" | head -n1)
[ -n "$account" ] && [ -n "$namespace" ] || die "cannot read account_id/namespace_id from $here/kvsync.yaml"
auth=(-H "Authorization: Bearer $token")
api() { echo "$base/accounts/$account/storage/kv/namespaces/$1"; }
keys() {
	curl -fsS "${auth[@]}" "$(api "$1")/keys" | grep -o '"name":[[:space:]]*"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | LC_ALL=C sort | tr '\n' ' '
}
# writes: the emulator's count of write requests (put, bulk put, deletes)
# whatever their status; stats: the whole counter set, for a failure message.
stats() { curl -fsS "${auth[@]}" "${base%/client/v4}/__emulator/stats"; }
writes() { stats | sed -n 's/.*"writes":[[:space:]]*\([0-9]*\).*/\1/p'; }

tree=$tmp/tree
install -d -m 0755 "$tree" "$tree/css" "$tree/docs"
printf '<!doctype html>\n<title>kvsync</title>\n<h1>from the image</h1>\n' >"$tree/index.html"
printf '{"content_type":"text/html; charset=utf-8","owner":"image-test"}\n' >"$tree/index.html.meta.json"
printf 'body { font-family: sans-serif; }\n' >"$tree/css/site.css"
head -c 70000 /dev/urandom >"$tree/docs/blob.bin"
printf 'hidden files are not published\n' >"$tree/.hidden"
chmod 0644 "$tree"/*.* "$tree"/*/* "$tree/.hidden"
want='css/site.css docs/blob.bin index.html '

# The shipped config, except metrics_listen: with the host's network shared,
# 0.0.0.0:9464 would take the host's port; a kernel-chosen loopback port
# cannot collide with anything.
sed 's#^metrics_listen: .*#metrics_listen: 127.0.0.1:0#' "$here/kvsync.yaml" >"$tmp/kvsync.yaml"
chmod 0644 "$tmp/kvsync.yaml"
grep -q '^metrics_listen: 127.0.0.1:0$' "$tmp/kvsync.yaml" || die "could not move metrics_listen"

# run NAME VOLUME [ARGS...]: the image as a user runs it, detached.
run() {
	local name=$1 vol=$2
	shift 2
	podman run -d --name "$name" --read-only --read-only-tmpfs=false --user "$uid:$uid" --cap-drop=all \
		--security-opt no-new-privileges --network host \
		-v "$tree:/data:ro" -v "$tmp/kvsync.yaml:/etc/kvsync/kvsync.yaml:ro" -v "$vol:/var/lib/kvsync" \
		-e CLOUDFLARE_API_TOKEN="$token" -e CLOUDFLARE_API_BASE_URL="$base" \
		"$image" "$@" >/dev/null
}
# ready NAME: waits for /readyz (the initial sync finished) and sets metrics.
ready() {
	local name=$1 addr=
	for _ in $(seq 1 300); do
		addr=$(podman logs "$name" 2>&1 | sed -n 's/.*"msg":"metrics serving".*"addr":"\([^"]*\)".*/\1/p' | tail -n1)
		if [ -n "$addr" ] && curl -fsS -o /dev/null "http://$addr/readyz"; then
			metrics=http://$addr
			return 0
		fi
		[ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || break
		sleep 0.1
	done
	podman logs "$name" >&2 || true
	return 1
}

# --- run ------------------------------------------------------------------------
podman volume create kvsync-state-1 >/dev/null
run kvsync-1 kvsync-state-1
ready kvsync-1 || die "the container never became ready"
[ "$(keys "$namespace")" = "$want" ] || fail "keys after the first run: [$(keys "$namespace")], want [$want]"
for k in css/site.css docs/blob.bin index.html; do
	curl -fsS "${auth[@]}" -o "$tmp/got" "$(api "$namespace")/values/${k//\//%2F}" || fail "GET $k failed"
	cmp -s "$tmp/got" "$tree/$k" || fail "value of $k differs from its file"
done
curl -fsS "${auth[@]}" "$(api "$namespace")/metadata/index.html" | grep '"owner":[[:space:]]*"image-test"' >/dev/null ||
	fail "index.html's metadata is not its sidecar's"
printf 'written while running\n' >"$tree/later.txt"
chmod 0644 "$tree/later.txt"
for _ in $(seq 1 100); do [ "$(keys "$namespace")" = "$want"'later.txt ' ] && break; sleep 0.1; done
[ "$(keys "$namespace")" = "$want"'later.txt ' ] || fail "a file added to the read-only mount was not published: [$(keys "$namespace")]"
want="${want}later.txt "
pid=$(podman inspect -f '{{.State.Pid}}' kvsync-1)
status=$(cat "/proc/$pid/status")
field() { printf '%s\n' "$status" | awk -v k="$1:" '$1 == k { print $2 }'; }
[ "$(field Uid)" = "$uid" ] || fail "kvsync runs as uid $(field Uid), want $uid"
[ "$(field CapEff)" = 0000000000000000 ] || fail "effective capabilities $(field CapEff)"
[ "$(field CapBnd)" = 0000000000000000 ] || fail "bounding capabilities $(field CapBnd)"
[ "$(field NoNewPrivs)" = 1 ] || fail "NoNewPrivs is not set"
log "run: ready as uid $uid, no capabilities; KV holds $(keys "$namespace")"

# --- stop -----------------------------------------------------------------------
start=$SECONDS
podman stop -t 45 kvsync-1 >/dev/null || fail "podman stop failed"
took=$((SECONDS - start))
code=$(podman inspect -f '{{.State.ExitCode}}' kvsync-1)
[ "$code" = 0 ] || { podman logs --tail 20 kvsync-1 >&2; fail "exit status $code after SIGTERM, want 0"; }
# Within the drain timeout: podman would SIGKILL only at 45 s, so a stop
# that took 30 s or more means kvsync did not finish draining by itself.
[ "$took" -lt 30 ] || fail "stopping took ${took}s, not within the 30s drain timeout"
podman logs kvsync-1 2>&1 | grep '"msg":"stopping: finishing in-flight work"' >/dev/null ||
	fail "kvsync did not log its SIGTERM drain: was it signalled at all?"
vol1=$(podman volume inspect -f '{{.Mountpoint}}' kvsync-state-1)
[ -s "$vol1/state.db" ] || fail "no state.db on the state volume"
[ -z "$(find "$vol1" ! -uid "$uid")" ] || fail "state volume files not owned by $uid: $(find "$vol1" ! -uid "$uid")"
log "stop: SIGTERM, exit $code in ${took}s; state on the volume"

# --- restart on an empty state volume ------------------------------------------
before=$(writes)
stats >"$tmp/stats-before.json"
podman volume create kvsync-state-2 >/dev/null
run kvsync-2 kvsync-state-2
ready kvsync-2 || die "the second container never became ready"
after=$(writes)
[ "$(keys "$namespace")" = "$want" ] || fail "keys after the restart: [$(keys "$namespace")], want [$want]"
if [ "$after" -ne "$before" ]; then
	log "emulator counters before: $(cat "$tmp/stats-before.json")"
	log "emulator counters after:  $(stats)"
	podman logs kvsync-2 2>&1 | grep -i 'state\|full sync' | tail -n 5 >&2 || true
	fail "restart on an empty state volume sent $((after - before)) write requests, want 0 (issue 13: the namespace is the source of truth)"
else
	log "restart: empty state volume, 0 write requests"
fi
podman stop -t 45 kvsync-2 >/dev/null || fail "podman stop (second run) failed"

# --- flags alone ------------------------------------------------------------------
ns2=00000000000000000000000000000002
flags=(sync --dir /data --account-id "$account" --namespace-id "$ns2" --api-base-url "$base" --metrics-listen 127.0.0.1:0)
plain() {
	podman run --rm --read-only --read-only-tmpfs=false --user "$uid:$uid" --cap-drop=all --network host \
		-v "$tree:/data:ro" -v kvsync-state-3:/var/lib/kvsync -e CLOUDFLARE_API_TOKEN="$token" "$@"
}
podman volume create kvsync-state-3 >/dev/null
if plain "$image" "${flags[@]}" >"$tmp/flags.log" 2>&1; then
	[ "$(keys "$ns2")" = "$want" ] || fail "flags alone: keys [$(keys "$ns2")], want [$want]"
	vol3=$(podman volume inspect -f '{{.Mountpoint}}' kvsync-state-3)
	[ -s "$vol3/state.db" ] || fail "flags alone: no state.db on the volume"
	log "flags: sync with no config published $(keys "$ns2")"
else
	cat "$tmp/flags.log" >&2
	fail "flags alone: sync failed on the read-only root"
fi
# Without STATE_DIRECTORY the default is under $HOME on the read-only root.
if plain -e STATE_DIRECTORY= "$image" "${flags[@]}" >"$tmp/flags-nostate.log" 2>&1; then
	fail "flags alone with STATE_DIRECTORY emptied succeeded: the check above would not prove the image's ENV matters"
else
	cat "$tmp/flags-nostate.log" >&2; 	grep -q '/home/nonroot' "$tmp/flags-nostate.log" || { cat "$tmp/flags-nostate.log" >&2; fail "without STATE_DIRECTORY, sync failed for another reason than the state under \$HOME"; }
fi

if [ ${#failures[@]} -gt 0 ]; then
	log "${#failures[@]} check(s) failed:"
	printf '  - %s\n' "${failures[@]}" >&2
	exit 1
fi
log "OK"
