#!/usr/bin/env bash
# Runs deploy/systemd/kvsync.service, as the Debian package ships it, under a
# real systemd.
#
# CI machines have no systemd as PID 1, so this boots one in a container:
# systemd-nspawn (Debian's systemd-container, installed when missing) on an
# overlay of this machine's own root (a tmpfs upper layer: the host is not
# written), into a minimal target (basic.target, nothing the host enabled).
# kvsync arrives as an admin would install it: the .deb that
# deploy/debian/build-deb.sh makes (the binary at /usr/bin/kvsync, the unit
# under /lib/systemd/system, /etc/kvsync/kvsync.yaml as a conffile), put in
# with `dpkg -i` inside the booted container, so its maintainer scripts run
# against a live systemd. Then, as the admin: the conffile edited in place
# (api.base_url and metrics_listen pointed at loopback), a root-only token
# file at /etc/kvsync/cloudflare-api-token, and a tree at /srv/www. The
# container shares the host's network namespace, so
# kvsync reaches `kvsync emulator` running on the host's loopback; the
# emulator requires the token, which proves the LoadCredential= path.
#
# One drop-in shortens the watchdog (WatchdogSec=4s, RestartSec=1s) so its
# test takes seconds; everything else is the shipped unit, sandbox included.
#
# Checks, in order:
#   install   dpkg -i succeeds; kvsync is installed with its conffile; the unit
#             is loaded from /lib/systemd/system, neither enabled nor started
#   start     `systemctl start kvsync` returns (Type=notify: READY=1 came after
#             the initial sync) and the keys are in the emulator
#   sandbox   the main process is /usr/bin/kvsync, a non-root dynamic user with
#             NoNewPrivs, a seccomp filter and no capabilities; the state
#             database is under /var/lib/private/kvsync
#   readyz    /readyz answers 200
#   watch     a file written after start is published
#   upgrade   dpkg -i of the package again keeps the edited conffile and
#             restarts the running kvsync onto the installed binary
#   reload    `systemctl reload kvsync` succeeds, same main PID, still running
#   watchdog  pings arrive; a SIGSTOPped kvsync is killed for missing them and
#             restarted (Result=watchdog, then running again)
#   stop      `systemctl stop kvsync` ends it cleanly (status 0)
#   purge     `dpkg --purge kvsync` removes the binary, the unit and the
#             conffile; systemd no longer knows the unit
#
# Exit status: 0 passed, 1 failed, 77 skipped because this machine cannot
# boot a container at all (no overlayfs, nspawn refused, or the container's
# systemd never came up; kvsync is started only after that, so a kvsync
# problem can never turn into a skip). Set KVSYNC_STATIC_BIN to reuse a
# static build (it also runs the emulator), KVSYNC_DEB to install a package
# built already. Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../emulator.sh
. "$here/../emulator.sh"
repo=$(cd "$here/../.." && pwd)
account=0123456789abcdef0123456789abcdef # as in kvsync.yaml; checked below
token=boot-test-$$-$RANDOM$RANDOM

log() { printf 'boot-test.sh: %s\n' "$*" >&2; }
die() { log "FAIL: $*"; dump; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || skip "needs root (overlay mount, systemd-nspawn)"

tmp=$(mktemp -d)
chmod 0755 "$tmp"
emu_pid=
ns_pid=
init_pid=
dump() {
	[ -n "$init_pid" ] && in_ct journalctl -u kvsync --no-pager -n 40 -o short-precise >&2 2>/dev/null || true
	[ -s "$tmp/console.log" ] && { log "container console (tail):"; tail -n 20 "$tmp/console.log" >&2; } || true
}
cleanup() {
	set +e
	if [ -n "$ns_pid" ] && kill -0 "$ns_pid" 2>/dev/null; then
		[ -n "$init_pid" ] && in_ct systemctl poweroff --no-block >/dev/null 2>&1
		for _ in $(seq 1 100); do kill -0 "$ns_pid" 2>/dev/null || break; sleep 0.2; done
		kill -0 "$ns_pid" 2>/dev/null && kill -TERM "$ns_pid" && sleep 2
		kill -0 "$ns_pid" 2>/dev/null && kill -KILL "$ns_pid"
		wait "$ns_pid" 2>/dev/null
	fi
	if [ -n "$emu_pid" ]; then kill "$emu_pid" 2>/dev/null; wait "$emu_pid" 2>/dev/null; fi
	for m in "$tmp/ovl/root" "$tmp/ovl"; do
		mountpoint -q "$m" || continue
		for _ in $(seq 1 25); do umount "$m" 2>/dev/null && break; sleep 0.2; done
		mountpoint -q "$m" && umount -l "$m"
	done
	# Never recurse into a still-mounted overlay of /.
	if grep -q " $tmp/" /proc/mounts; then
		log "leaving $tmp: still mounted"
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT

in_ct() { nsenter --target "$init_pid" --all "$@"; }
prop() { in_ct systemctl show kvsync --property="$1" --value; }

if ! command -v systemd-nspawn >/dev/null; then
	log "installing systemd-container from Debian"
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get install -y -qq --no-install-recommends systemd-container >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends systemd-container >/dev/null; }; } ||
		skip "cannot install systemd-container"
fi
command -v nsenter >/dev/null || skip "nsenter (util-linux) missing"

# --- the binary -------------------------------------------------------------
if [ -n "${KVSYNC_STATIC_BIN:-}" ]; then
	bin=$KVSYNC_STATIC_BIN
else
	log "building the static binary"
	(cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=boot-test" -o "$tmp/kvsync" ./cmd/kvsync) ||
		die "go build ./cmd/kvsync failed"
	bin=$tmp/kvsync
fi

# --- the package --------------------------------------------------------------
if [ -n "${KVSYNC_DEB:-}" ]; then
	deb=$KVSYNC_DEB
else
	log "building the package"
	deb=$(bash "$repo/deploy/debian/build-deb.sh" -o "$tmp/deb" -b "$bin" "$(dpkg --print-architecture)") ||
		die "deploy/debian/build-deb.sh failed"
fi
[ -f "$deb" ] || die "no package at $deb"

# --- the overlay root -------------------------------------------------------
mkdir -p "$tmp/ovl"
mount -t tmpfs -o mode=0755 tmpfs "$tmp/ovl" || skip "cannot mount a tmpfs"
mkdir -p "$tmp/ovl/upper" "$tmp/ovl/work" "$tmp/ovl/root"
R=$tmp/ovl/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$tmp/ovl/upper,workdir=$tmp/ovl/work" "$R" || skip "cannot mount an overlay of /"
[ -x "$R/lib/systemd/systemd" ] || skip "no systemd under / to boot"

# The service's state starts empty whatever the host holds: a kvsync run as
# root on this machine (its default state_dir is /var/lib/kvsync) would show
# through the overlay, and systemd cannot move such a directory to
# DynamicUser='s /var/lib/private across the overlay's layers (EXDEV). The
# removal only whites it out in the overlay; the host keeps its files.
rm -rf "$R/var/lib/kvsync" "$R/var/lib/private/kvsync"

# A machine id of its own: nspawn refuses a container whose id equals the host's.
tr -d '-' </proc/sys/kernel/random/uuid >"$R/etc/machine-id"

# Whatever a manual install left on this machine stays out of the way: the
# package's unit must find its own binary, and only the package's unit.
rm -f "$R/usr/local/bin/kvsync" "$R/etc/systemd/system/kvsync.service"
rm -rf "$R/etc/kvsync"
install -m 0644 "$deb" "$R/root/kvsync.deb"
# A machine built as a container image (this one, CI's) carries Docker's
# policy-rc.d, which refuses every service action from a maintainer script. A
# real host has none, and the package's restart on upgrade and stop on removal
# are what this test checks.
rm -f "$R/usr/sbin/policy-rc.d"
# Drop-ins apply to the packaged unit as they would to any admin's.
install -d -m 0755 "$R/etc/systemd/system/kvsync.service.d"
printf '[Service]\nWatchdogSec=4s\nRestartSec=1s\n' >"$R/etc/systemd/system/kvsync.service.d/boot-test.conf"
printf '[Unit]\nDescription=kvsync boot test\nRequires=basic.target\nAfter=basic.target\nAllowIsolate=yes\n' \
	>"$R/etc/systemd/system/kvsync-boot-test.target"

# --- the emulator on the host ----------------------------------------------
start_emulator "$bin" "$token" "$tmp"

# --- tree ----------------------------------------------------------------------
namespace=$(sed -n 's/^[[:space:]]*namespace_id:[[:space:]]*\([0-9a-f]*\).*/\1/p' "$here/kvsync.yaml" | head -n1)
grep -Eq '^[[:space:]]+dir: /srv/www$' "$here/kvsync.yaml" || die "kvsync.yaml must sync /srv/www (the unit's ReadOnlyPaths=)"
rm -rf "$R/srv/www"
install -d -m 0755 "$R/srv/www" "$R/srv/www/css" "$R/srv/www/drafts"
printf '<h1>booted</h1>\n' >"$R/srv/www/index.html"
printf 'h1 { color: teal; }\n' >"$R/srv/www/css/site.css"
printf 'excluded by the example config\n' >"$R/srv/www/drafts/wip.html"
chmod 0644 "$R/srv/www/index.html" "$R/srv/www/css/site.css" "$R/srv/www/drafts/wip.html"

keys() {
	curl -fsS -H "Authorization: Bearer $token" "$base/accounts/$account/storage/kv/namespaces/$namespace/keys" |
		grep -o '"name":[[:space:]]*"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | LC_ALL=C sort | tr '\n' ' '
}

# --- boot ---------------------------------------------------------------------
systemd-nspawn --directory="$R" --boot --register=no --keep-unit --machine="kvsync-boot-$$" \
	--console=pipe -- systemd.unit=kvsync-boot-test.target >"$tmp/console.log" 2>&1 </dev/null &
ns_pid=$!
for _ in $(seq 1 100); do
	init_pid=$(pgrep -P "$ns_pid" -x systemd || true)
	[ -n "$init_pid" ] && break
	kill -0 "$ns_pid" 2>/dev/null || { tail -n 20 "$tmp/console.log" >&2; skip "systemd-nspawn exited before starting systemd"; }
	sleep 0.1
done
[ -n "$init_pid" ] || { tail -n 20 "$tmp/console.log" >&2; skip "systemd-nspawn started no systemd"; }
state=
for _ in $(seq 1 120); do
	state=$(in_ct systemctl is-system-running 2>/dev/null || true)
	case $state in running | degraded) break ;; esac
	kill -0 "$ns_pid" 2>/dev/null || { ns_pid=; tail -n 20 "$tmp/console.log" >&2; skip "the container stopped while booting"; }
	sleep 0.5
done
case $state in running | degraded) ;; *) tail -n 20 "$tmp/console.log" >&2; skip "the container's systemd is '$state' after 60s" ;; esac
log "container booted ($(in_ct systemctl --version | head -n1), state $state)"

# --- install --------------------------------------------------------------------
timeout 120 nsenter --target "$init_pid" --all dpkg -i /root/kvsync.deb >"$tmp/dpkg-install.log" 2>&1 ||
	{ cat "$tmp/dpkg-install.log" >&2; die "dpkg -i kvsync.deb failed"; }
[ "$(in_ct dpkg-query -W -f '${Status}' kvsync)" = "install ok installed" ] || die "kvsync is not installed after dpkg -i"
grep -q '^ /etc/kvsync/kvsync.yaml [0-9a-f]\{32\}$' <<<"$(in_ct dpkg-query -W -f '${Conffiles}\n' kvsync)" ||
	die "/etc/kvsync/kvsync.yaml is not a conffile of the package"
[ "$(prop LoadState)" = loaded ] || die "the packaged unit did not load: LoadState=$(prop LoadState)"
[ "$(prop FragmentPath)" = /lib/systemd/system/kvsync.service ] || die "the unit was loaded from $(prop FragmentPath)"
[ "$(prop UnitFileState)" = disabled ] || die "installing enabled the unit ($(prop UnitFileState)): it cannot run before it is configured"
[ "$(prop ActiveState)" = inactive ] || die "installing started the unit ($(prop ActiveState))"
grep -q 'path=/usr/bin/kvsync ' <<<"$(prop ExecStart)" || die "the packaged unit runs $(prop ExecStart)"
log "install: dpkg -i; the unit is loaded from the package, disabled and inactive"

# --- config and token, as the admin -----------------------------------------------
conf=$R/etc/kvsync/kvsync.yaml
sed -i -e "s#^api:\$#api:\n  base_url: $base#" -e 's#^metrics_listen: .*#metrics_listen: 127.0.0.1:0#' "$conf"
grep -q "^  base_url: $base\$" "$conf" || die "could not point api.base_url at the emulator"
grep -q '^metrics_listen: 127.0.0.1:0$' "$conf" || die "could not set metrics_listen"
grep -q "^  account_id: $account\$" "$conf" || die "kvsync.yaml's account_id is not $account"
[ "$(stat -c '%a %U' "$conf")" = "644 root" ] || die "the packaged kvsync.yaml is $(stat -c '%a %U' "$conf"), want 644 root"
install -m 0600 -o root -g root /dev/null "$R/etc/kvsync/cloudflare-api-token"
printf '%s' "$token" >"$R/etc/kvsync/cloudflare-api-token"

# --- start ----------------------------------------------------------------------
timeout 90 nsenter --target "$init_pid" --all systemctl start kvsync || die "systemctl start kvsync failed"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] || die "kvsync is $(prop ActiveState)/$(prop SubState) after start"
[ "$(prop Type)" = notify ] || die "Type is $(prop Type)"
want='css/site.css index.html '
[ "$(keys)" = "$want" ] || die "keys after start: [$(keys)], want [$want]"
log "start: READY after the initial sync; KV holds $(keys)"

# --- sandbox --------------------------------------------------------------------
pid=$(prop MainPID)
[ "$(in_ct readlink "/proc/$pid/exe")" = /usr/bin/kvsync ] || die "the main process is $(in_ct readlink "/proc/$pid/exe"), not the package's /usr/bin/kvsync"
status=$(in_ct cat "/proc/$pid/status")
field() { printf '%s\n' "$status" | awk -v k="$1:" '$1 == k { print $2 }'; }
[ "$(field Uid)" != 0 ] || die "kvsync runs as root"
[ "$(field NoNewPrivs)" = 1 ] || die "NoNewPrivs is not set"
[ "$(field Seccomp)" = 2 ] || die "no seccomp filter (Seccomp: $(field Seccomp))"
[ "$(field CapEff)" = 0000000000000000 ] || die "effective capabilities: $(field CapEff)"
[ "$(field CapBnd)" = 0000000000000000 ] || die "bounding capabilities: $(field CapBnd)"
in_ct test -s /var/lib/private/kvsync/state.db || die "no state database in /var/lib/private/kvsync"
[ "$(in_ct stat -c %u /var/lib/private/kvsync/state.db)" = "$(field Uid)" ] || die "the state database is not the service user's"
log "sandbox: uid $(field Uid), NoNewPrivs, seccomp, no capabilities; state in /var/lib/private/kvsync"

# --- readyz -----------------------------------------------------------------------
maddr=$(in_ct journalctl -u kvsync -o cat --no-pager | sed -n 's/.*msg="metrics serving" addr=\(127\.0\.0\.1:[0-9]*\).*/\1/p' | tail -n1)
[ -n "$maddr" ] || die "kvsync logged no metrics address"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$maddr/readyz")
[ "$code" = 200 ] || die "/readyz answered $code"
log "readyz: 200 on $maddr"

# --- watch ----------------------------------------------------------------------
in_ct sh -c 'umask 022; printf "written after start\n" > /srv/www/late.txt'
want='css/site.css index.html late.txt '
for _ in $(seq 1 100); do [ "$(keys)" = "$want" ] && break; sleep 0.2; done
[ "$(keys)" = "$want" ] || die "a file written after start was not published: [$(keys)]"
log "watch: late.txt published"

# --- upgrade --------------------------------------------------------------------
timeout 180 nsenter --target "$init_pid" --all dpkg -i /root/kvsync.deb >"$tmp/dpkg-upgrade.log" 2>&1 ||
	{ cat "$tmp/dpkg-upgrade.log" >&2; die "dpkg -i over the installed package failed"; }
grep -q "^  base_url: $base\$" "$conf" || die "reinstalling the package lost the admin's edit of kvsync.yaml"
! in_ct test -e /etc/kvsync/kvsync.yaml.dpkg-new || die "reinstalling left kvsync.yaml.dpkg-new"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] || die "kvsync is $(prop ActiveState)/$(prop SubState) after reinstalling"
[ "$(prop MainPID)" != "$pid" ] || die "reinstalling did not restart the running kvsync"
pid=$(prop MainPID)
[ "$(in_ct readlink "/proc/$pid/exe")" = /usr/bin/kvsync ] || die "after reinstalling, the main process is $(in_ct readlink "/proc/$pid/exe")"
[ "$(keys)" = "$want" ] || die "keys after reinstalling: [$(keys)], want [$want]"
log "upgrade: the edited conffile is kept; kvsync restarted onto the package's binary (PID $pid)"

# --- reload ---------------------------------------------------------------------
timeout 60 nsenter --target "$init_pid" --all systemctl reload kvsync || die "systemctl reload kvsync failed"
[ "$(prop MainPID)" = "$pid" ] || die "reload replaced the process"
[ "$(prop ActiveState)/$(prop SubState)" = active/running ] || die "kvsync is $(prop ActiveState)/$(prop SubState) after reload"
log "reload: OK, same PID $pid"

# --- watchdog ---------------------------------------------------------------------
first=$(prop WatchdogTimestampMonotonic)
for _ in $(seq 1 50); do [ "$(prop WatchdogTimestampMonotonic)" != "$first" ] && break; sleep 0.2; done
[ "$(prop WatchdogTimestampMonotonic)" != "$first" ] || die "no WATCHDOG=1 ping within 10s (WatchdogSec=4s)"
in_ct systemctl kill --signal=SIGSTOP kvsync
restarted=
for _ in $(seq 1 150); do
	if [ "$(prop NRestarts)" -ge 1 ] && [ "$(prop ActiveState)/$(prop SubState)" = active/running ] && [ "$(prop MainPID)" != "$pid" ]; then
		restarted=1
		break
	fi
	sleep 0.2
done
[ -n "$restarted" ] || die "a stopped kvsync was not killed by the watchdog and restarted within 30s"
# (Read the journal into a variable first: with pipefail, grep -q closing the
# pipe early would fail the pipeline even on a match.)
journal=$(in_ct journalctl -u kvsync -o cat --no-pager)
grep -q "Failed with result 'watchdog'" <<<"$journal" || die "the restart was not the watchdog's"
log "watchdog: pings arrive; a hung kvsync was killed and restarted (PID $(prop MainPID))"

# --- stop -----------------------------------------------------------------------
timeout 90 nsenter --target "$init_pid" --all systemctl stop kvsync || die "systemctl stop kvsync failed"
[ "$(prop Result)" = success ] || die "stop: Result=$(prop Result)"
[ "$(prop ExecMainStatus)" = 0 ] || die "stop: exit status $(prop ExecMainStatus)"
log "stop: clean exit"

# --- purge ----------------------------------------------------------------------
timeout 120 nsenter --target "$init_pid" --all dpkg --purge kvsync >"$tmp/dpkg-purge.log" 2>&1 ||
	{ cat "$tmp/dpkg-purge.log" >&2; die "dpkg --purge kvsync failed"; }
! in_ct test -e /usr/bin/kvsync || die "purge left /usr/bin/kvsync"
! in_ct test -e /lib/systemd/system/kvsync.service || die "purge left the unit"
! in_ct test -e /etc/kvsync/kvsync.yaml || die "purge left the conffile"
[ "$(prop LoadState)" = not-found ] || die "after purge, systemd still has the unit: LoadState=$(prop LoadState)"
log "purge: binary, unit and conffile gone; systemd forgot the unit"
log "OK"
