#!/usr/bin/env bash
# CI entry point for the deployment files (called by `make deploy-check`):
#
#   1. deploy/systemd/verify.sh       systemd-analyze verify + security of the unit
#   2. deploy/systemd/boot-test.sh    the Debian package installed with dpkg -i
#                                     in a real systemd booted in systemd-nspawn:
#                                     install, readiness, sandbox, watch, upgrade,
#                                     reload, watchdog restart, clean stop, purge
#   3. deploy/container/rootfs-test.sh the image's static binary syncing from an
#                                     otherwise empty root as uid 65532
#   4. deploy/debian/lintian.sh       the .deb for amd64 and arm64, built and
#                                     checked by lintian: no errors or warnings
#   5. deploy/debian/dist-test.sh     `make dist` twice, from two clones: every
#                                     file byte-identical
#   6. go test ./deploy/...           strict decoding of the Kubernetes manifests,
#                                     the example configs against internal/config,
#                                     unit/Dockerfile/config consistency
#
# Every step runs even when an earlier one failed; the exit status is non-zero
# if any failed. A step exiting 77 is reported as SKIPPED (boot-test.sh does so
# only when the machine cannot boot a container at all) and does not fail the
# run. Needs root on Debian (apt-get for systemd-container and lintian when
# missing, chroot, mounts) and loopback only. kvsync is built once, exactly as
# the Dockerfile builds it, and shared by the scripts.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
version=ci-deploy-check

passed=0
failed=0
skipped=0
failures=()
step() {
	local name=$1
	shift
	local start=$SECONDS
	echo "=== deploy: $name"
	"$@"
	local rc=$?
	if [ $rc -eq 0 ]; then
		echo "--- ok:   $name ($((SECONDS - start))s)"
		passed=$((passed + 1))
	elif [ $rc -eq 77 ]; then
		echo "--- SKIPPED: $name ($((SECONDS - start))s)"
		skipped=$((skipped + 1))
	else
		echo "--- FAIL: $name (exit $rc, $((SECONDS - start))s)"
		failed=$((failed + 1))
		failures+=("$name")
	fi
}

build() {
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$tmp/kvsync" ./cmd/kvsync
}

step "build kvsync (static, as the Dockerfile does)" build
if [ -x "$tmp/kvsync" ]; then
	step "systemd/verify.sh" env KVSYNC_BIN="$tmp/kvsync" bash "$here/systemd/verify.sh"
	step "systemd/boot-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" bash "$here/systemd/boot-test.sh"
	step "container/rootfs-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" KVSYNC_VERSION="$version" bash "$here/container/rootfs-test.sh"
else
	# Each script builds for itself; let them report the build error too.
	step "systemd/verify.sh" bash "$here/systemd/verify.sh"
	step "systemd/boot-test.sh" bash "$here/systemd/boot-test.sh"
	step "container/rootfs-test.sh" bash "$here/container/rootfs-test.sh"
fi
step "debian/lintian.sh" bash "$here/debian/lintian.sh"
step "debian/dist-test.sh" bash "$here/debian/dist-test.sh"
step "go test ./deploy/..." go test -count=1 ./deploy/...

if [ "$failed" -gt 0 ]; then
	printf 'deploy: failed: %s\n' "${failures[@]}"
fi
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
