# deploy/container/podman.sh: sourced by image-test.sh and
# ../kubernetes/play-test.sh, which define log and die.
#
# podman_setup DIR installs podman, buildah, runc and catatonit from Debian
# when missing, and points podman at a private configuration under DIR:
# storage (images, containers, volumes, secrets), run state, events and
# network config all live there, so a test leaves the host's
# /var/lib/containers, /run/libpod and /etc/cni alone. One file escapes:
# containers/image keeps root's blob-info cache at the fixed path
# /var/lib/containers/cache, which no configuration moves; teardown removes
# /var/lib/containers again if the test created it. podman_teardown removes
# everything it made and unmounts what storage left mounted.
#
# base_image NAME builds, from this machine's files, an image with what
# gcr.io/distroless/static-debian12:nonroot holds that kvsync relies on:
# the CA bundle, a passwd and group naming root, nobody and nonroot (65532)
# with nonroot's home, /tmp (1777) and a root-owned /var/lib. No registry is
# reachable here, so the Dockerfile's digest-pinned base cannot be pulled;
# this stands in for it through --build-arg BASE. Not included: tzdata
# (kvsync loads no time zone by name, and expiration is in Unix seconds;
# at most its log timestamps' zone could differ: UTC here),
# /etc/os-release, netbase and the dpkg status files of the packages
# distroless lists.

# cap_4096 LIMIT: LIMIT, or 4096 when LIMIT is higher or unlimited.
cap_4096() {
	if [ "$1" = unlimited ] || [ "$1" -gt 4096 ]; then echo 4096; else echo "$1"; fi
}

podman_setup() {
	local dir=$1
	local missing=()
	command -v podman >/dev/null || missing+=(podman)
	command -v buildah >/dev/null || missing+=(buildah)
	command -v runc >/dev/null || missing+=(runc)
	# podman builds the pause image of a pod (kube play) around catatonit.
	command -v catatonit >/dev/null || [ -x /usr/libexec/podman/catatonit ] || missing+=(catatonit)
	if [ ${#missing[@]} -gt 0 ]; then
		log "installing ${missing[*]} from Debian"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
			die "cannot install ${missing[*]}"
	fi
	[ -e /var/lib/containers ] || podman_made_varlib=1
	mkdir -p "$dir/storage" "$dir/run" "$dir/libpod" "$dir/cni" "$dir/tmp"
	# runc: crun refuses this kind of machine's hybrid cgroup v1/v2 layout.
	# default_ulimits at or below the current limits: podman's defaults
	# raise RLIMIT_NOFILE, which an unprivileged CI container may not.
	local nofile nproc
	nofile=$(cap_4096 "$(ulimit -Hn)")
	nproc=$(cap_4096 "$(ulimit -Hu)")
	cat >"$dir/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$dir/events.log"
tmp_dir = "$dir/libpod"
image_copy_tmp_dir = "$dir/tmp"

[network]
network_config_dir = "$dir/cni"
CONF
	cat >"$dir/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$dir/storage"
runroot = "$dir/run"
CONF
	export CONTAINERS_CONF=$dir/containers.conf CONTAINERS_STORAGE_CONF=$dir/storage.conf
	podman_dir=$dir
	local got
	got=$(podman info --format '{{.Store.GraphRoot}} {{.Host.OCIRuntime.Name}}') || die "podman info failed"
	[ "$got" = "$dir/storage runc" ] || die "podman does not use the private storage and runc: $got"
}

podman_teardown() {
	[ -n "${podman_dir:-}" ] || return 0
	podman pod rm -af -t 0 >/dev/null 2>&1
	podman rm -af -t 0 >/dev/null 2>&1
	podman volume rm -af >/dev/null 2>&1
	podman system reset -f >/dev/null 2>&1
	local m
	awk -v d="$podman_dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m"
	done
	if [ -n "${podman_made_varlib:-}" ]; then rm -rf /var/lib/containers; fi
}

# podman_scratch: the test's temporary directory ($tmp) with podman's
# storage under it, and an EXIT trap that stops the pods, then the emulator
# ($emu_pid, when the test started one), and removes it all.
podman_scratch() {
	tmp=$(mktemp -d)
	chmod 0755 "$tmp"
	emu_pid=
	trap podman_scratch_cleanup EXIT
	podman_setup "$tmp/podman"
}

podman_scratch_cleanup() {
	set +e
	podman_teardown
	if [ -n "$emu_pid" ]; then kill "$emu_pid" 2>/dev/null; wait "$emu_pid" 2>/dev/null; fi
	if grep -q " $tmp/" /proc/mounts; then log "leaving $tmp: still mounted"; else rm -rf "$tmp"; fi
}

base_image() {
	local name=$1 root=$podman_dir/base-root
	local ca=/etc/ssl/certs/ca-certificates.crt
	[ -s "$ca" ] || die "$ca is missing (Debian package ca-certificates)"
	rm -rf "$root"
	install -d -m 0755 "$root" "$root/etc" "$root/etc/ssl" "$root/etc/ssl/certs" "$root/home" "$root/var" "$root/var/lib"
	install -d -m 0700 "$root/root"
	install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
	install -d -m 1777 "$root/tmp"
	install -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
	printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
		'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
	chmod 0644 "$root/etc/passwd" "$root/etc/group"
	tar --numeric-owner --sort=name --mtime=@0 -C "$root" -cf "$podman_dir/base.tar" . || die "cannot pack the base"
	# distroless:nonroot's own config: its user, and PATH for images that
	# add a program to it.
	podman import --quiet --change 'USER 65532:65532' --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
		"$podman_dir/base.tar" "$name" >/dev/null || die "podman import of the base failed"
}
