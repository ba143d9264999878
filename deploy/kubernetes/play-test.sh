#!/usr/bin/env bash
# Runs the Kubernetes example of this directory as a pod under
# `podman kube play`, against `kvsync emulator` on the host.
#
#   build    the local stand-in for the distroless base (../container/podman.sh),
#            the kvsync image with `make image`, and the app's image: that
#            base plus Debian's static busybox (no registry to pull
#            busybox from)
#   prepare  playprep/ turns configmap.yaml, deployment.yaml and
#            secret.example.yaml into what podman 4.3 plays on one machine:
#            one pod per replica (3), each with its own emptyDirs, election
#            off (no API server); README.md ("Played under podman in CI")
#            lists each change
#   play     in each pod the app writes its files into the pod's emptyDir
#            and the kvsync container publishes them: the emulator holds
#            exactly those keys, byte-identical to the app's files; kvsync
#            runs as 65532 with a read-only root and /data mounted
#            read-only, GOMEMLIMIT from the memory limit, POD_NAME its pod's
#   kill     one pod's kvsync process is killed (SIGKILL, as by a crash or
#            the OOM killer) while its app writes one more file: podman
#            restarts the container and it publishes that file too
#   replay   `podman kube down` (the emptyDirs go with the pods), then play
#            again: once every app has rewritten its files and kvsync has
#            had three times its 1 s debounce to act, the emulator counted
#            no write request from any of the three fresh pods (the
#            namespace is the source of truth: issue 13)
#
# Every check runs; the exit status is 1 if any failed. Needs root. Set
# KVSYNC_STATIC_BIN to run the emulator from an existing build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=../emulator.sh
. "$here/../emulator.sh"
# shellcheck source=../container/podman.sh
. "$here/../container/podman.sh"

version=${KVSYNC_VERSION:-play-test}
image=localhost/kvsync:$version
app_image=localhost/kvsync-play-app:test
base_ref=localhost/kvsync-base:test
token=play-test-$$-$RANDOM$RANDOM
uid=65532
# playprep plays deployment.yaml's Deployment "site" as pods site-0, site-1,
# ... (one per replica); a pod's containers are <pod>-kvsync and <pod>-app.
replicas=$(sed -n 's/^  replicas:[[:space:]]*\([0-9]*\).*/\1/p' "$here/deployment.yaml")
[ -n "$replicas" ] || die "cannot read replicas from deployment.yaml"
pods=()
for i in $(seq 0 $((replicas - 1))); do pods+=("site-$i"); done
pod=${pods[0]}
kv=$pod-kvsync
app=$pod-app

log() { printf 'play-test.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
failures=()
fail() { log "FAIL: $*"; failures+=("$*"); }

[ "$(id -u)" -eq 0 ] || die "needs root (podman storage, containers as uid $uid)"
command -v curl >/dev/null || die "curl is required"

podman_scratch
busybox=/bin/busybox
# Debian's busybox package is linked dynamically; busybox-static replaces it.
if ! [ -x "$busybox" ] || ldd "$busybox" >/dev/null 2>&1; then
	log "installing busybox-static from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends busybox-static >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends busybox-static >/dev/null; } ||
		die "cannot install busybox-static"
fi
! ldd "$busybox" >/dev/null 2>&1 || die "$busybox is not static: the base has no libc"

# --- build --------------------------------------------------------------------
base_image "$base_ref"
(cd "$repo" && make --no-print-directory image VERSION="$version" BASE="$base_ref" IMAGE="$image" BUILDER=podman >"$tmp/build.log" 2>&1) ||
	{ cat "$tmp/build.log" >&2; die "make image failed"; }
bin=${KVSYNC_STATIC_BIN:-$repo/bin/kvsync}
ctx=$tmp/app
install -d -m 0755 "$ctx" "$ctx/bin"
install -m 0755 "$busybox" "$ctx/bin/busybox"
for tool in sh printf mv sleep cat; do ln -s busybox "$ctx/bin/$tool"; done
printf 'FROM %s\nCOPY bin/ /bin/\n' "$base_ref" >"$ctx/Containerfile"
podman build -q -t "$app_image" "$ctx" >/dev/null || die "building the app image failed"
log "images: $image, $app_image"

# --- prepare --------------------------------------------------------------------
start_emulator "$bin" "$token" "$tmp"
(cd "$repo" && go run ./deploy/kubernetes/playprep -dir deploy/kubernetes -image "$image" -app-image "$app_image" \
	-api-base-url "$base" -token "$token" -metrics-listen 127.0.0.1:0 -secret-json "$tmp/secret.json") >"$tmp/play.yaml" ||
	die "playprep failed"
podman secret create kvsync-cloudflare "$tmp/secret.json" >/dev/null || die "podman secret create failed"
account=$(sed -n 's/^[[:space:]]*account_id:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$here/configmap.yaml" | head -n1)
namespace=$(sed -n 's/^[[:space:]]*namespace_id:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$here/configmap.yaml" | head -n1)
[ -n "$account" ] && [ -n "$namespace" ] || die "cannot read account_id/namespace_id from configmap.yaml"
auth=(-H "Authorization: Bearer $token")
nsapi=$base/accounts/$account/storage/kv/namespaces/$namespace
keys() { curl -fsS "${auth[@]}" "$nsapi/keys" | grep -o '"name":[[:space:]]*"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | LC_ALL=C sort | tr '\n' ' '; }
stats() { curl -fsS "${auth[@]}" "${base%/client/v4}/__emulator/stats"; }
writes() { stats | sed -n 's/.*"writes":[[:space:]]*\([0-9]*\).*/\1/p'; }

# ready [CONTAINER]: waits for a kvsync container's /readyz (its initial
# sync done); by default every pod's.
ready() {
	local c addr ok
	local cs=("$@")
	[ $# -gt 0 ] || for c in "${pods[@]}"; do cs+=("$c-kvsync"); done
	for c in "${cs[@]}"; do
		ok=
		for _ in $(seq 1 300); do
			addr=$(podman logs "$c" 2>&1 | sed -n 's/.*"msg":"metrics serving".*"addr":"\([^"]*\)".*/\1/p' | tail -n1)
			if [ -n "$addr" ] && curl -fsS -o /dev/null "http://$addr/readyz"; then
				ok=1
				break
			fi
			sleep 0.1
		done
		[ -n "$ok" ] || { log "$c is not ready"; podman logs "$c" >&2 || true; return 1; }
	done
}
# published KEY...: waits until each key's value in the emulator is the
# first pod's app's file /data/KEY (every replica's app writes the same).
published() {
	local k ok
	for _ in $(seq 1 100); do
		ok=1
		for k in "$@"; do
			podman exec "$app" cat "/data/$k" >"$tmp/want" 2>/dev/null &&
				curl -fsS "${auth[@]}" -o "$tmp/got" "$nsapi/values/$k" 2>/dev/null &&
				cmp -s "$tmp/want" "$tmp/got" || { ok=; break; }
		done
		[ -n "$ok" ] && return 0
		sleep 0.1
	done
	return 1
}

# --- play -----------------------------------------------------------------------
# From $tmp: podman 4.3 looks for a directory named like each image in the
# working directory to build it from (a stray ./kvsync binary there fails the
# play), whatever --build says.
(cd "$tmp" && podman kube play --build=false play.yaml) >"$tmp/play.log" 2>&1 || { cat "$tmp/play.log" >&2; die "podman kube play failed"; }
[ "$(podman pod ps --format '{{.Name}}' | LC_ALL=C sort | tr '\n' ' ')" = "${pods[*]} " ] ||
	fail "pods: $(podman pod ps --format '{{.Name}}' | tr '\n' ' '), want ${pods[*]}"
ready || die "kvsync never became ready"
published index.html site.css || fail "the app's files were not published: keys [$(keys)]"
[ "$(keys)" = 'index.html site.css ' ] || fail "keys after play: [$(keys)], want [index.html site.css]"
for p in "${pods[@]}"; do
	c=$p-kvsync
	[ "$(podman inspect -f '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}' "$c")" = "$uid:$uid true" ] ||
		fail "$c runs as $(podman inspect -f '{{.Config.User}}, read-only root {{.HostConfig.ReadonlyRootfs}}' "$c")"
	podman inspect -f '{{range .Mounts}}{{.Destination}}={{.RW}} {{end}}' "$c" | grep '/data=false' >/dev/null ||
		fail "/data is writable in $c"
	env=$(podman inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$c")
	# 256Mi, the shipped limits.memory, through resourceFieldRef.
	grep -x 'GOMEMLIMIT=268435456' <<<"$env" >/dev/null || fail "$c: GOMEMLIMIT is not the memory limit: $(grep GOMEMLIMIT <<<"$env")"
	grep -x "POD_NAME=$p" <<<"$env" >/dev/null || fail "$c: POD_NAME is not its pod's name: $(grep POD_NAME <<<"$env")"
	# Each pod's emptyDirs are its own (a cluster never shares them).
	podman exec "$p-app" sh -c "printf '%s' $p >/data/.whoami" || fail "$p-app cannot write /data"
done
for p in "${pods[@]}"; do
	[ "$(podman exec "$p-app" cat /data/.whoami)" = "$p" ] || fail "$p shares /data with $(podman exec "$p-app" cat /data/.whoami)"
done
log "play: ${#pods[@]} pods ready; the app's files are in KV: $(keys)"

# --- kill -----------------------------------------------------------------------
restarts=$(podman inspect -f '{{.RestartCount}}' "$kv")
pid=$(podman inspect -f '{{.State.Pid}}' "$kv")
kill -KILL "$pid"
podman exec "$app" sh -c 'printf "written while kvsync was down\n" >/data/.later.txt.tmp && mv /data/.later.txt.tmp /data/later.txt' ||
	fail "the app could not write later.txt"
for _ in $(seq 1 100); do
	[ "$(podman inspect -f '{{.RestartCount}} {{.State.Running}}' "$kv")" = "$((restarts + 1)) true" ] && break
	sleep 0.1
done
[ "$(podman inspect -f '{{.RestartCount}} {{.State.Running}}' "$kv")" = "$((restarts + 1)) true" ] ||
	fail "kvsync was not restarted after being killed ($(podman inspect -f 'restarts {{.RestartCount}}, running {{.State.Running}}' "$kv"))"
ready "$kv" || fail "kvsync never became ready again after being killed"
published index.html site.css later.txt || fail "after the restart, later.txt was not published: keys [$(keys)]"
log "kill: kvsync restarted and converged: $(keys)"

# --- replay ---------------------------------------------------------------------
podman kube down "$tmp/play.yaml" >/dev/null || fail "podman kube down failed"
for p in "${pods[@]}"; do
	podman volume exists "$p-kvsync-state" && fail "$p's state emptyDir outlived its pod"
done
before=$(writes)
stats >"$tmp/stats-before.json"
(cd "$tmp" && podman kube play --build=false play.yaml) >"$tmp/play2.log" 2>&1 || { cat "$tmp/play2.log" >&2; die "podman kube play (again) failed"; }
ready || die "kvsync never became ready in the replayed pods"
published index.html site.css || fail "the replayed pods' files are not what KV holds"
# kvsync writes a changed file once it has been quiet for 1 s (quiet): three
# times that after the app's files are in place leaves it room to act.
sleep 3
after=$(writes)
[ "$(keys)" = 'index.html later.txt site.css ' ] || fail "keys after replay: [$(keys)], want [index.html later.txt site.css] (delete: keep)"
if [ "$after" -ne "$before" ]; then
	log "emulator counters before: $(cat "$tmp/stats-before.json")"
	log "emulator counters after:  $(stats)"
	for p in "${pods[@]}"; do podman logs "$p-kvsync" 2>&1 | grep 'state\|full sync' | tail -n 3 >&2 || true; done
	fail "the ${#pods[@]} replayed pods sent $((after - before)) write requests, want 0 (issue 13: the namespace is the source of truth)"
else
	log "replay: ${#pods[@]} fresh pods, 0 write requests"
fi

if [ ${#failures[@]} -gt 0 ]; then
	log "${#failures[@]} check(s) failed:"
	printf '  - %s\n' "${failures[@]}" >&2
	exit 1
fi
log "OK"
