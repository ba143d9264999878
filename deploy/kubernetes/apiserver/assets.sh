#!/usr/bin/env bash
# Puts a kube-apiserver and an etcd in a cache directory keyed by their
# versions and prints that directory: the assets kvsync's leader-election
# tests start on 127.0.0.1 (internal/kubetest, KVSYNC_KUBE_ASSETS).
#
#   kube-apiserver  built from the Go module proxy with this directory's
#                   module (about 9 minutes on 2 cores cold, 2 GB of build
#                   cache; seconds when the build cache is warm)
#   etcd            Debian's etcd-server, unpacked with dpkg -x rather than
#                   installed, so no etcd service is enabled on the machine
#
# A directory that already holds both binaries is reused as it is. Progress
# goes to stderr; stdout is the directory alone.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")
cache=${KVSYNC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kvsync}
dir="$cache/kube-assets-$version"
mkdir -p "$dir"
# Two callers at once (make test while a developer's test run fetches the
# same assets) must not build into the same temporary file: the second waits
# here for the first and then finds both binaries in place.
exec 9>"$dir/.lock"
flock 9

if [ ! -x "$dir/kube-apiserver" ]; then
	echo "assets: building kube-apiserver $version into $dir (cold: about 9 minutes)" >&2
	minor=${version#v1.}
	minor=${minor%%.*}
	pkg=k8s.io/component-base/version
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -o "$dir/kube-apiserver.tmp" \
		-ldflags "-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor" \
		k8s.io/kubernetes/cmd/kube-apiserver)
	mv "$dir/kube-apiserver.tmp" "$dir/kube-apiserver"
fi

if [ ! -x "$dir/etcd" ]; then
	if command -v etcd >/dev/null; then
		ln -sf "$(command -v etcd)" "$dir/etcd"
	else
		echo "assets: fetching Debian's etcd-server into $dir" >&2
		dl=$(mktemp -d)
		trap 'rm -rf "$dl"' EXIT
		chmod 755 "$dl" # apt downloads as the _apt user
		if ! (cd "$dl" && apt-get download -qq etcd-server 2>/dev/null); then
			apt-get update -qq
			(cd "$dl" && apt-get download -qq etcd-server)
		fi
		dpkg -x "$dl"/etcd-server_*.deb "$dl/root"
		cp "$dl/root/usr/bin/etcd" "$dir/etcd.tmp"
		mv "$dir/etcd.tmp" "$dir/etcd"
	fi
fi

"$dir/kube-apiserver" --version >&2
# sed reads to the end: head would exit after one line, and under pipefail
# the SIGPIPE etcd then got would fail the script (it did, at random).
"$dir/etcd" --version | sed -n 1p >&2
echo "$dir"
