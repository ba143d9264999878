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
#   4. deploy/container/image-test.sh `make image` on a local stand-in for the
#                                     base, run under podman: read-only root,
#                                     uid 65532, no capabilities, SIGTERM,
#                                     restart on an empty state volume, flags
#                                     alone; size, layers, labels
#   5. deploy/kubernetes/play-test.sh the Kubernetes example as a pod under
#                                     podman kube play: the app's files
#                                     published, kvsync killed and back,
#                                     the pod played again
#   6. deploy/debian/lintian.sh       the .deb for amd64 and arm64, built and
#                                     checked by lintian: no errors or warnings
#   7. deploy/debian/dist-test.sh     `make dist` twice, from two clones: every
#                                     file byte-identical
#   8. go test ./deploy/...           strict decoding of the Kubernetes manifests,
#                                     the example configs against internal/config,
#                                     unit/Dockerfile/config consistency, and the
#                                     metric names of the alerts and the dashboard
#                                     against a scrape of a real kvsync run
#   9. promtool check/test rules      deploy/prometheus: the alerting rules and
#                                     their unit tests (promtool from .ci/run)
#  10. deploy/grafana/gen             the committed dashboard JSON is what its
#                                     generator (a module of its own) writes
#
# Every step runs even when an earlier one failed; the exit status is non-zero
# if any failed. A step exiting 77 is reported as SKIPPED (boot-test.sh does so
# only when the machine cannot boot a container at all, the promtool step only
# outside CI when promtool is missing) and does not fail the run. Needs root
# on Debian (apt-get for systemd / systemd-container, podman, buildah, runc,
# catatonit and lintian when missing; chroot, mounts) and loopback only.
# kvsync is built once, exactly as `make build` builds the binary the
# Dockerfile copies, and shared by the scripts; image-test.sh and
# play-test.sh build the image with `make image`, which runs `make build`
# into bin/ itself, as a user's build does.
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

step "build kvsync (static, as make build does)" build
if [ -x "$tmp/kvsync" ]; then
	step "systemd/verify.sh" env KVSYNC_BIN="$tmp/kvsync" bash "$here/systemd/verify.sh"
	step "systemd/boot-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" bash "$here/systemd/boot-test.sh"
	step "container/rootfs-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" KVSYNC_VERSION="$version" bash "$here/container/rootfs-test.sh"
	step "container/image-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" KVSYNC_VERSION="$version" bash "$here/container/image-test.sh"
	step "kubernetes/play-test.sh" env KVSYNC_STATIC_BIN="$tmp/kvsync" KVSYNC_VERSION="$version" bash "$here/kubernetes/play-test.sh"
else
	# Each script builds for itself; let them report the build error too.
	step "systemd/verify.sh" bash "$here/systemd/verify.sh"
	step "systemd/boot-test.sh" bash "$here/systemd/boot-test.sh"
	step "container/rootfs-test.sh" bash "$here/container/rootfs-test.sh"
	step "container/image-test.sh" bash "$here/container/image-test.sh"
	step "kubernetes/play-test.sh" bash "$here/kubernetes/play-test.sh"
fi
step "debian/lintian.sh" bash "$here/debian/lintian.sh"
step "debian/dist-test.sh" bash "$here/debian/dist-test.sh"
step "go test ./deploy/..." go test -count=1 ./deploy/...

# .ci/run puts promtool on PATH. A developer without it gets a skip, CI a
# failure: rules nobody tested must not pass for tested.
prometheus_rules() {
	if ! command -v promtool >/dev/null; then
		echo "promtool not found (Debian package prometheus; .ci/run unpacks it)"
		[ -n "${CI:-}" ] && return 1
		return 77
	fi
	promtool check rules "$here/prometheus/kvsync.rules.yaml" &&
		(cd "$here/prometheus" && promtool test rules kvsync.rules.test.yaml)
}
step "prometheus: promtool check rules + test rules" prometheus_rules

grafana_dashboard() {
	(cd "$here/grafana/gen" && go vet ./... && go test -count=1 ./...)
}
step "grafana: dashboard JSON equals its generator's output" grafana_dashboard

if [ "$failed" -gt 0 ]; then
	printf 'deploy: failed: %s\n' "${failures[@]}"
fi
echo "deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
