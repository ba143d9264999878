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

# Go module -> license, for every module linked into kvsync: the DEP-5 short
# name of what its license file(s) say, read by hand. A module missing here
# fails the build: a new dependency's license is read before it ships. Names
# are listed one by one (no k8s.io/*) for the same reason.
module_license() {
	case $1 in
	github.com/beorn7/perks | github.com/bmatcuk/doublestar/v4 | github.com/cespare/xxhash/v2 | go.etcd.io/bbolt | \
		github.com/emicklei/go-restful/v3 | github.com/fxamacker/cbor/v2 | github.com/josharian/intern | \
		github.com/json-iterator/go | github.com/mailru/easyjson | github.com/x448/float16) echo MIT ;;
	github.com/coreos/go-systemd/v22 | github.com/prometheus/client_golang | github.com/prometheus/client_model | \
		github.com/prometheus/common | github.com/prometheus/procfs | \
		github.com/go-logr/logr | github.com/go-openapi/jsonpointer | github.com/go-openapi/jsonreference | \
		github.com/go-openapi/swag | github.com/google/gnostic-models | github.com/modern-go/concurrent | \
		github.com/modern-go/reflect2 | k8s.io/api | k8s.io/apimachinery | k8s.io/client-go | k8s.io/klog/v2 | \
		k8s.io/kube-openapi | k8s.io/utils | sigs.k8s.io/randfill | sigs.k8s.io/structured-merge-diff/v6) echo Apache-2.0 ;;
	github.com/fsnotify/fsnotify | github.com/munnerz/goautoneg | golang.org/x/* | google.golang.org/protobuf | \
		github.com/gogo/protobuf | github.com/google/uuid | github.com/pmezard/go-difflib | github.com/spf13/pflag | \
		gopkg.in/evanphx/json-patch.v4 | gopkg.in/inf.v0) echo BSD-3-Clause ;;
	github.com/pkg/errors) echo BSD-2-Clause ;;
	github.com/davecgh/go-spew) echo ISC ;;
	# libyaml's C code ported to Go stays MIT; the rest is Canonical's, Apache.
	gopkg.in/yaml.v3 | go.yaml.in/yaml/v3) echo "MIT and Apache-2.0" ;;
	go.yaml.in/yaml/v2) echo "Apache-2.0 and MIT" ;;
	# internal/golang/* is encoding/json forked from Go; the rest Apache.
	sigs.k8s.io/json) echo "Apache-2.0 and BSD-3-Clause" ;;
	# Its LICENSE holds four: its own MIT (Sam Ghods), Go's BSD-3-Clause, and
	# the MIT and Apache-2.0 of the go-yaml forks it once carried.
	sigs.k8s.io/yaml) echo "MIT and BSD-3-Clause and Apache-2.0" ;;
	*) return 1 ;;
	esac
}

# Modules whose license files name only the holders of code they forked
# (Go's, go-yaml's), not their own authors: their source headers are read too.
holders_also_from_headers() {
	case $1 in
	sigs.k8s.io/json | sigs.k8s.io/yaml) return 0 ;;
	*) return 1 ;;
	esac
}

# Modules that name no copyright holder anywhere: not in a license file, a
# NOTICE or any source file. The holder is given by hand, from the upstream
# project, and the stanza says so.
module_holder_by_hand() {
	case $1 in
	github.com/modern-go/concurrent | github.com/modern-go/reflect2) echo "2018 Tao Wen" ;;
	*) return 1 ;;
	esac
}

# Copyright lines of a license or NOTICE file: "Copyright" followed by a
# year, (c) or ©, which skips the license bodies' "copyright notice" and the
# Apache appendix's "Copyright [yyyy]" template. A holder wrapped onto the
# next line (inf.v0's "... Portions Copyright (c) 2009 The Go" / "Authors.")
# is joined back: a line not ending in "." continues when the next one is a
# short non-blank line that is no Copyright line of its own.
copyright_lines() {
	awk '
		function emit() { if (held != "" && !seen[held]++) print held; held = "" }
		FNR == 1 { emit() }
		{ sub(/^[[:space:]]+/, ""); sub(/[[:space:]]+$/, "") }
		held != "" && held !~ /\.$/ && $0 != "" && $0 !~ /^Copyright[[:space:]]/ && length($0) < 40 { held = held " " $0; emit(); next }
		{ emit() }
		/^Copyright[[:space:]]+([0-9]|\([cC]\)|©)/ { held = $0 }
		END { emit() }' "$@" 2>/dev/null || true
}

# The holders named in a module's Go source headers ("Copyright 2014 The
# Kubernetes Authors."), most files first, each with the span of its years:
# Kubernetes' modules, for one, ship the bare Apache-2.0 text and no NOTICE.
header_holders() {
	find "$1" -name '*.go' -type f -print0 | sort -z | xargs -0 -r grep -hE \
		'^[[:space:]]*(//|/?\*)?[[:space:]]*Copyright[[:space:]]+(\([cC]\)[[:space:]]+|©[[:space:]]+)?[0-9]{4}' |
		sed -E 's/^[[:space:]]*(\/\/|\/?\*)?[[:space:]]*Copyright[[:space:]]+(\([cC]\)[[:space:]]+|©[[:space:]]+)?//; s/[[:space:]]+$//' |
		awk '{
			match($0, /^[0-9][0-9][0-9][0-9]([-,][[:space:]]*[0-9][0-9][0-9][0-9])*,?[[:space:]]*/)
			years = substr($0, 1, RLENGTH); holder = substr($0, RLENGTH + 1)
			if (holder == "") next
			n = split(years, y, /[^0-9]+/)
			for (i = 1; i <= n; i++) if (y[i] != "") {
				if (!(holder in lo) || y[i] < lo[holder]) lo[holder] = y[i]
				if (!(holder in hi) || y[i] > hi[holder]) hi[holder] = y[i]
			}
			count[holder]++
		}
		END { for (h in count) printf "%d\t%s\t%s\n", count[h], (lo[h] == hi[h] ? lo[h] : lo[h] "-" hi[h]), h }' |
		sort -t "$(printf '\t')" -k1,1nr -k3,3 | cut -f2- | tr '\t' ' ' || true
}

# A text as the continuation lines of a DEP-5 field. A file whose last line
# has no newline (go-restful's, cbor's LICENSE) must not run into the next
# field.
dep5_text() { sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /' "$@" | sed -e '$a\'; }

# A license file's text for a License field, with any full copy of the
# Apache License 2.0 in it (go.yaml.in/yaml/v2's LICENSE, the parts of
# sigs.k8s.io/json's and sigs.k8s.io/yaml's) cut down to a pointer: the
# standalone Apache-2.0 paragraph stands for it, and Debian policy (lintian:
# copyright-file-contains-full-apache-2-license) wants common-licenses used.
license_text() {
	awk '
		state == 0 && /^[[:space:]]*Apache License[[:space:]]*$/ {
			print "(The Apache License, Version 2.0: /usr/share/common-licenses/Apache-2.0.)"
			state = 1; next
		}
		state == 1 { if (/END OF TERMS AND CONDITIONS/) state = 2; next }
		state == 2 && /^[[:space:]]*$/ { next }
		state == 2 && /APPENDIX: How to apply the Apache License/ { state = 3; next }
		state == 2 { state = 0 }
		state == 3 { if (/limitations under the License\./) state = 0; next }
		{ print }' "$1" | dep5_text
}

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
			local files=() licenses=() how=
			for f in "$dir"/LICENSE "$dir"/LICENSE.txt "$dir"/LICENSE.md "$dir"/license.md "$dir"/LICENSE.libyaml "$dir"/NOTICE; do
				[ -f "$f" ] || continue
				files+=("$f")
				[ "${f##*/}" = NOTICE ] || licenses+=("$f")
			done
			[ "${#licenses[@]}" -gt 0 ] || { echo "build-deb.sh: no license file in $path@$version" >&2; return 1; }
			holders=$(copyright_lines "${files[@]}")
			if [ -z "$holders" ] || holders_also_from_headers "$path"; then
				local from_headers
				from_headers=$(header_holders "$dir")
				if [ -n "$from_headers" ]; then
					how=" Its Copyright lists $([ -z "$holders" ] || echo "the holders its license names, then ")the holders from its source files' headers."
					holders=$(printf '%s\n%s\n' "$holders" "$from_headers" | awk 'NF && !seen[$0]++')
				fi
			fi
			if [ -z "$holders" ] && holders=$(module_holder_by_hand "$path"); then
				how=" No license file, NOTICE or source file of it names a holder: its Copyright is the upstream author, given by hand."
			fi
			[ -n "$holders" ] || { echo "build-deb.sh: no copyright line in $path's license, notice or source headers" >&2; return 1; }
			echo
			echo "Files: vendor/$path/*"
			printf 'Copyright: %s\n' "$(sed '1!s/^/ /' <<<"$holders")"
			echo "License: $license"
			# Apache-2.0's text is the standalone paragraph at the end; any
			# other license's text is given here, as its files word it.
			if [ "$license" != Apache-2.0 ]; then
				local first=1
				for f in "${licenses[@]}"; do
					[ "$first" = 1 ] || echo " ."
					first=0
					license_text "$f"
				done
			fi
			printf 'Comment: Go module %s %s, statically linked into /usr/bin/kvsync.%s\n' "$path" "$version" "$how"
			if [ -f "$dir/NOTICE" ]; then
				echo " Its NOTICE file:"
				dep5_text "$dir/NOTICE"
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
