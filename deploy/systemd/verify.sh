#!/usr/bin/env bash
# Static checks of deploy/systemd/kvsync.service, for CI.
#
#   1. `systemd-analyze verify` must print nothing about the unit: systemd
#      only *warns* (exit status 0) about an unknown key, a bad time value or
#      a misspelt option and then ignores that line, so a typo in a hardening
#      option would silently switch it off. Any output line naming the unit
#      fails the check; a non-zero exit status fails it too.
#   2. `systemd-analyze security --offline=yes` must rate the unit's exposure
#      at or below $KVSYNC_MAX_EXPOSURE (default 2.0 on systemd's 0-10
#      scale; the unit scores 1.4), so dropping a sandboxing option fails CI.
#
# `verify` checks that ExecStart= names an existing executable, so the unit is
# copied into a temp dir with /usr/local/bin/kvsync rewritten to a freshly
# built kvsync (or $KVSYNC_BIN when the caller already built one).
#
# Runs as root on a plain Debian machine or container: no running systemd is
# needed (no PID 1 systemd, no D-Bus); if systemd-analyze is missing, Debian's
# `systemd` package is installed. Lines systemd-analyze prints about OTHER
# units or the host (seen in containers: nothing so far, but e.g. warnings
# from units under /etc/systemd that our unit pulls in through After=) are
# shown as "ignored" and do not fail the check.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
unit_src="$here/kvsync.service"
max_exposure=${KVSYNC_MAX_EXPOSURE:-2.0}

log() { printf 'verify.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# ExecReload=/bin/kill must exist too, or verify complains about it.
[ -x /bin/kill ] || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
	log "installing ${missing[*]} from Debian"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
log "$(systemd-analyze --version | head -n1)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ -n "${KVSYNC_BIN:-}" ]; then
	[ -x "$KVSYNC_BIN" ] || die "KVSYNC_BIN=$KVSYNC_BIN is not executable"
	bin=$KVSYNC_BIN
else
	log "building kvsync"
	(cd "$repo" && go build -o "$tmp/bin/kvsync" ./cmd/kvsync) || die "go build ./cmd/kvsync failed"
	bin=$tmp/bin/kvsync
fi

# The unit file name must stay kvsync.service: systemd derives the unit name
# (and the type, from the suffix) from it.
mkdir -p "$tmp/unit"
unit="$tmp/unit/kvsync.service"
sed "s#/usr/local/bin/kvsync#${bin//#/\\#}#g" "$unit_src" >"$unit"
grep -q "^ExecStart=$bin run " "$unit" || die "ExecStart rewrite did not apply; is the unit still using /usr/local/bin/kvsync?"

# 1. verify
set +e
out=$(cd "$tmp/unit" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no ./kvsync.service 2>&1)
rc=$?
set -e
bad=0
while IFS= read -r line; do
	[ -n "$line" ] || continue
	case $line in
	*kvsync*) log "verify: $line"; bad=1 ;;
	*) log "ignored (not about kvsync.service): $line" ;;
	esac
done <<<"$out"
[ $rc -eq 0 ] || die "systemd-analyze verify exited $rc"
[ $bad -eq 0 ] && log "verify: no warnings" || die "systemd-analyze verify warned about kvsync.service (see above)"

# 2. security exposure (threshold is an integer, exposure x 10)
threshold=$(awk -v e="$max_exposure" 'BEGIN { printf "%d", e * 10 }')
set +e
sec=$(cd "$tmp/unit" && SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes --no-pager --threshold="$threshold" ./kvsync.service 2>&1)
rc=$?
set -e
overall=$(printf '%s\n' "$sec" | grep -a 'Overall exposure level' || true)
[ -n "$overall" ] || { printf '%s\n' "$sec" >&2; die "systemd-analyze security printed no overall exposure"; }
if [ $rc -ne 0 ]; then
	printf '%s\n' "$sec" | grep -a '^✗' >&2 || true
	die "$overall (allowed at most $max_exposure)"
fi
log "security: ${overall#*→ } (allowed at most $max_exposure)"

log "OK"
