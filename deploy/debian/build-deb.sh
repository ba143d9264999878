#!/usr/bin/env bash
# Builds kvsync_<version>_<arch>.deb with dpkg-deb alone (no debhelper, no
# new Go dependency), reproducibly: two runs from the same commit give the
# same bytes.
#
#   deploy/debian/build-deb.sh [-o OUTDIR] [-b BINARY] ARCH...
#
# ARCH is a Debian architecture that is also a GOARCH (amd64, arm64). Without
# -b, the static binary is built here as `make build` builds it (plus
# -buildvcs=false); -b packages a binary already built that way, for one ARCH.
# OUTDIR defaults to the repository's dist/. Environment:
#   VERSION             what `kvsync version` says; default as the Makefile's
#   SOURCE_DATE_EPOCH   every timestamp in the package; default the commit time
#   DEB_MAINTAINER      the Maintainer field
#
# What goes where, and why:
#   /usr/bin/kvsync                        the static binary
#   /lib/systemd/system/kvsync.service     deploy/systemd/kvsync.service with
#                                          ExecStart at /usr/bin (bookworm's
#                                          debhelper installs units under /lib)
#   /etc/kvsync/kvsync.yaml                deploy/systemd/kvsync.yaml, a conffile
#   /usr/share/doc/kvsync/copyright        DEP-5: kvsync, the vendored schema,
#                                          and every Go module and the Go
#                                          runtime linked into the binary
#   /usr/share/doc/kvsync/changelog.gz     one entry for this build: the
#                                          packaging lives upstream, so the
#                                          package is native (no -N revision)
#   /usr/share/doc/kvsync/README.md.gz, README.systemd.md.gz
#   /usr/share/man/man1/kvsync.1.gz        deploy/debian/kvsync.1
#   /usr/share/lintian/overrides/kvsync    deploy/debian/lintian-overrides
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

out=$repo/dist
bin=
while getopts o:b: opt; do
	case $opt in
	o) out=$OPTARG ;;
	b) bin=$OPTARG ;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-o OUTDIR] [-b BINARY] ARCH..." >&2; exit 2; }
[ -z "$bin" ] || [ $# -eq 1 ] || { echo "$0: -b packages one binary, for one ARCH" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -z "$bin" ] || bin=$(realpath "$bin")
cd "$repo"

VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
export SOURCE_DATE_EPOCH
# The identity every commit of this repository is made under; set
# DEB_MAINTAINER to a real contact when publishing.
maintainer=${DEB_MAINTAINER:-kvsync maintainers <maintainers@users.noreply.r-seed-a0ce1cf7.example>}
# Locale and umask must not leak into sort order, dates or file modes.
export LC_ALL=C TZ=UTC
umask 022

# A Debian version must start with a digit and sort by release: v1.2.3 is
# 1.2.3, v1.2.3-rc1 is 1.2.3~rc1 (below 1.2.3); v1.2.3-4-gabc (4 commits
# later) is 1.2.3+4.gabc; with no tag yet, a bare hash sorts below any
# release as 0.0~git<date>.<hash>. -dirty stays visible as +dirty. (A hash
# can start with a digit: a release has a dot.)
debian_version() {
	local v=$1 dirty=
	case $v in *-dirty) dirty=+dirty v=${v%-dirty} ;; esac
	if [[ $v =~ ^v?([0-9]+\.[0-9][0-9A-Za-z.~-]*)-([0-9]+)-(g[0-9a-f]+)$ ]]; then
		v="${BASH_REMATCH[1]//-/\~}+${BASH_REMATCH[2]}.${BASH_REMATCH[3]}"
	elif [[ $v =~ ^v?([0-9]+\.[0-9][0-9A-Za-z.~-]*)$ ]]; then
		v=${BASH_REMATCH[1]//-/\~}
	else
		v="0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d).$(printf '%s' "$v" | tr -c 'A-Za-z0-9.+~\n' '.')"
	fi
	printf '%s%s\n' "$v" "$dirty"
}
debver=$(debian_version "$VERSION")
goversion=$(go env GOVERSION)

# The toolchain is Go's own release, not a Debian source package, so the
# field names it as upstream does (go, at its release number): it is what a
# security fix in the runtime would be checked against.
static_built_using="go (= ${goversion#go})"

# Go module -> license, for every module linked into kvsync. A module missing
# here fails the build: a new dependency's license is read before it ships.
module_license() {
	case $1 in
	github.com/beorn7/perks | github.com/bmatcuk/doublestar/v4 | github.com/cespare/xxhash/v2 | go.etcd.io/bbolt) echo MIT ;;
	github.com/coreos/go-systemd/v22 | github.com/prometheus/client_golang | github.com/prometheus/client_model | \
		github.com/prometheus/common | github.com/prometheus/procfs) echo Apache-2.0 ;;
	github.com/fsnotify/fsnotify | github.com/munnerz/goautoneg | golang.org/x/* | google.golang.org/protobuf) echo BSD-3-Clause ;;
	gopkg.in/yaml.v3) echo "MIT and Apache-2.0" ;;
	*) return 1 ;;
	esac
}

# Copyright lines of a license or NOTICE file: "Copyright" followed by a
# year, (c) or ©, which skips the license bodies' "copyright notice" and the
# Apache appendix's "Copyright [yyyy]" template.
copyright_lines() {
	grep -hE '^[[:space:]]*Copyright[[:space:]]+([0-9]|\([cC]\)|©)' "$@" 2>/dev/null | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | awk '!seen[$0]++' || true
}

# A text as the continuation lines of a DEP-5 field.
dep5_text() { sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$@"; }

write_copyright() {
	local binary=$1 dest=$2
	{
		cat <<-EOF
			Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
			Upstream-Name: kvsync
			Upstream-Contact: $maintainer
			Source: https://github.com/kvsync/kvsync

			Files: *
			Copyright: 2026 The kvsync Authors
			License: Apache-2.0
			Comment: The source's NOTICE file:
		EOF
		dep5_text NOTICE
		cat <<-EOF

			Files: api/openapi/*
			Copyright: 2022, Cloudflare
			License: BSD-3-Clause
			Comment: Cloudflare's OpenAPI schema of the Workers KV API, vendored for
			 kvsync's tests only; it is not compiled into /usr/bin/kvsync.
		EOF
		dep5_text api/openapi/LICENSE
		local goroot
		goroot=$(go env GOROOT)
		cat <<-EOF

			Files: GOROOT/src/*
			Copyright: $(copyright_lines "$goroot/LICENSE" | head -n1 | sed 's/^Copyright[[:space:]]*//')
			License: BSD-3-Clause
			Comment: The Go runtime and standard library ($goversion), statically linked
			 into /usr/bin/kvsync.
		EOF
		dep5_text "$goroot/LICENSE"
		local path version dir license holders
		# The binary's own build info lists exactly what was linked.
		while read -r path version; do
			license=$(module_license "$path") || {
				echo "build-deb.sh: $path is linked into kvsync but has no license in module_license; read its LICENSE and add it" >&2
				return 1
			}
			dir=$(go mod download -json "$path@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
			[ -d "$dir" ] || { echo "build-deb.sh: no module directory for $path@$version" >&2; return 1; }
			local files=()
			for f in "$dir"/LICENSE "$dir"/LICENSE.txt "$dir"/LICENSE.md "$dir"/NOTICE; do
				[ -f "$f" ] && files+=("$f")
			done
			holders=$(copyright_lines "${files[@]}")
			[ -n "$holders" ] || { echo "build-deb.sh: no copyright line in $path's license or notice" >&2; return 1; }
			echo
			echo "Files: vendor/$path/*"
			printf 'Copyright: %s\n' "$(sed '1!s/^/ /' <<<"$holders")"
			if [ "$license" = Apache-2.0 ]; then
				echo "License: Apache-2.0"
				printf 'Comment: Go module %s %s, statically linked into /usr/bin/kvsync.\n' "$path" "$version"
				if [ -f "$dir/NOTICE" ]; then
					echo " Its NOTICE file:"
					dep5_text "$dir/NOTICE"
				fi
			else
				echo "License: $license"
				dep5_text "${files[0]}"
				printf 'Comment: Go module %s %s, statically linked into /usr/bin/kvsync.\n' "$path" "$version"
				if [ -f "$dir/NOTICE" ]; then
					echo " Its NOTICE file:"
					dep5_text "$dir/NOTICE"
				fi
			fi
		done < <(go version -m "$binary" | awk '$1 == "dep" { print $2, $3 }' | sort)
		cat <<-EOF

			License: Apache-2.0
			 Licensed under the Apache License, Version 2.0 (the "License");
			 you may not use this file except in compliance with the License.
			 You may obtain a copy of the License at
			 .
			 http://www.apache.org/licenses/LICENSE-2.0
			 .
			 Unless required by applicable law or agreed to in writing, software
			 distributed under the License is distributed on an "AS IS" BASIS,
			 WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
			 See the License for the specific language governing permissions and
			 limitations under the License.
			 .
			 On Debian systems, the complete text of the Apache License, Version 2.0
			 can be found in "/usr/share/common-licenses/Apache-2.0".
		EOF
	} >"$dest"
}

build_binary() {
	local arch=$1 dest=$2
	# As dist.sh builds: baseline instruction set, nothing from GOFLAGS.
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOAMD64=v1 GOARM64=v8.0 GOFLAGS= GOEXPERIMENT= go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION" -o "$dest" ./cmd/kvsync
}

build_deb() {
	local arch=$1 binary=$2
	local root=$work/$arch/root
	local doc=$root/usr/share/doc/kvsync

	install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/kvsync" "$doc" \
		"$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"
	install -m 0755 "$binary" "$root/usr/bin/kvsync"

	# The shipped unit runs /usr/local/bin/kvsync, as a manual install puts it.
	sed 's#^ExecStart=/usr/local/bin/kvsync #ExecStart=/usr/bin/kvsync #' deploy/systemd/kvsync.service >"$root/lib/systemd/system/kvsync.service"
	[ "$(grep -c '^ExecStart=/usr/bin/kvsync run ' "$root/lib/systemd/system/kvsync.service")" = 1 ] ||
		{ echo "build-deb.sh: deploy/systemd/kvsync.service has no single ExecStart=/usr/local/bin/kvsync to rewrite" >&2; return 1; }
	chmod 0644 "$root/lib/systemd/system/kvsync.service"
	install -m 0644 deploy/systemd/kvsync.yaml "$root/etc/kvsync/kvsync.yaml"

	write_copyright "$binary" "$doc/copyright"
	chmod 0644 "$doc/copyright"
	{
		printf 'kvsync (%s) unstable; urgency=medium\n\n' "$debver"
		printf '  * Built from kvsync %s.\n\n' "$VERSION"
		printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
	} | gzip -n -9 >"$doc/changelog.gz"
	gzip -n -9 <README.md >"$doc/README.md.gz"
	gzip -n -9 <deploy/systemd/README.md >"$doc/README.systemd.md.gz"
	sed -e "s/@VERSION@/$VERSION/g" -e "s/@DATE@/$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)/g" \
		"$here/kvsync.1" | gzip -n -9 >"$root/usr/share/man/man1/kvsync.1.gz"
	chmod 0644 "$doc"/*.gz "$root/usr/share/man/man1/kvsync.1.gz"
	install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/kvsync"

	install -m 0644 "$here/conffiles" "$root/DEBIAN/conffiles"
	install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
	(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
	chmod 0644 "$root/DEBIAN/md5sums"

	# As dpkg-gencontrol counts it: KiB per file, rounded up, one per directory.
	local size
	size=$(cd "$root" && find . -path ./DEBIAN -prune -o -mindepth 1 -printf '%y %s\n' |
		awk '{ n += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print n }')
	local maint_sed
	maint_sed=$(printf '%s' "$maintainer" | sed 's/[\/&]/\\&/g')
	sed -e "s/@VERSION@/$debver/" -e "s/@ARCH@/$arch/" -e "s/@MAINTAINER@/$maint_sed/" \
		-e "s/@INSTALLED_SIZE@/$size/" -e "s/@STATIC_BUILT_USING@/$static_built_using/" \
		"$here/control.in" >"$root/DEBIAN/control"
	chmod 0644 "$root/DEBIAN/control"

	# dpkg-deb clamps mtimes to SOURCE_DATE_EPOCH and sorts entries; set them
	# anyway so files older than the commit cannot show through.
	find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	dpkg-deb --root-owner-group -Zxz --build "$root" "$out/kvsync_${debver}_${arch}.deb" >/dev/null
	echo "$out/kvsync_${debver}_${arch}.deb"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for arch in "$@"; do
	case $arch in amd64 | arm64) ;; *) echo "build-deb.sh: unsupported architecture $arch" >&2; exit 2 ;; esac
	mkdir -p "$work/$arch"
	if [ -n "$bin" ]; then
		binary=$bin
	else
		binary=$work/$arch/kvsync
		build_binary "$arch" "$binary"
	fi
	# The package's Architecture must be the binary's.
	got=$(go version -m "$binary" | awk '$1 == "build" && $2 ~ /^GOARCH=/ { sub(/^GOARCH=/, "", $2); print $2 }')
	[ "$got" = "$arch" ] || { echo "build-deb.sh: $binary is GOARCH=$got, not $arch" >&2; exit 1; }
	build_deb "$arch" "$binary"
done
