#!/usr/bin/env bash
# bench/run.sh: kvsync's publishing benchmark, side by side with wrangler and
# a per-file curl loop, against the local Workers KV emulator.
#
# usage: bench/run.sh [--quick] [--scenarios LIST] [--repeat N]
#
#   --quick          only the 10,000 x 1 KiB comparison and 1,000 x 100 KiB
#                    (about a minute, most of it the curl loop); same as
#                    --scenarios small,medium,wrangler,curl
#   --scenarios LIST comma-separated, from:
#                      small     10,000 x 1 KiB, every 10th file with a sidecar
#                      medium    1,000 x 100 KiB, every 10th with a sidecar
#                      large     20 x 25 MiB (KV's largest value), 2 sidecars
#                      huge      100,000 x 1 KiB, every 100th with a sidecar
#                      budget    the huge tree against an emulator enforcing
#                                Cloudflare's 1,200 requests per 5 minutes
#                      wrangler  `wrangler kv bulk put` of the small tree's pairs
#                      curl      one curl PUT per file of the small tree
#                      million   1,000,000 x 100 bytes in 259 directories:
#                                a stat-only walk beside first publish,
#                                no-op syncs and `kvsync run` until ready
#                                (issue 14); several minutes and about 4 GB
#                                of disk under BENCH_OUT, hence not default
#                    default: all of them but million
#   --repeat N       runs of the small tree by kvsync and by wrangler (the
#                    median is reported; the machine may be shared). Default 3.
#
# Environment: BENCH_OUT (default bench/out: trees, which are cached between
# runs, and per-run logs), BENCH_CACHE (default bench/.cache: the wrangler
# install), BENCH_EMULATOR (a kvsync binary whose `emulator` serves the runs
# instead of the one built here: to tell what a change of the emulator did). Needs bash, curl, Go and, for wrangler, Node.js >= 20 with npm;
# installs wrangler@4.86.0 with npm and curl with apt-get when missing.
# Every server it starts listens on 127.0.0.1 only.
set -euo pipefail

WRANGLER_VERSION=4.86.0
ACCOUNT=bench-account
TOKEN=bench-token-$$
REPEAT=3
SCENARIOS=small,medium,large,huge,budget,wrangler,curl

while (($#)); do
	case $1 in
	--quick) SCENARIOS=small,medium,wrangler,curl ;;
	--scenarios)
		SCENARIOS=${2:?--scenarios needs a list}
		shift
		;;
	--scenarios=*) SCENARIOS=${1#*=} ;;
	--repeat)
		REPEAT=${2:?--repeat needs a number}
		shift
		;;
	--repeat=*) REPEAT=${1#*=} ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "bench/run.sh: unknown argument $1 (try --help)" >&2
		exit 2
		;;
	esac
	shift
done
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || {
	echo "bench/run.sh: --repeat wants a positive number, got $REPEAT" >&2
	exit 2
}
for s in ${SCENARIOS//,/ }; do
	case $s in small | medium | large | huge | budget | wrangler | curl | million) ;;
	*)
		echo "bench/run.sh: unknown scenario $s" >&2
		exit 2
		;;
	esac
done
want() { [[ ",$SCENARIOS," == *",$1,"* ]]; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
OUT=${BENCH_OUT:-$BENCH_DIR/out}
CACHE=${BENCH_CACHE:-$BENCH_DIR/.cache}
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
RUN=$OUT/run-$RUN_ID
mkdir -p "$OUT/trees" "$RUN" "$CACHE"
RUN=$(cd "$RUN" && pwd)
OUT=$(cd "$OUT" && pwd)
CACHE=$(cd "$CACHE" && pwd)
BIN=$OUT/bin
FAILED=()

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
fail() {
	log "FAILED: $*"
	FAILED+=("$*")
}

# ---------------------------------------------------------------- processes
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_emulator NAME [flags...]: starts `kvsync emulator` on a free loopback
# port, in memory; sets EMU_API (API base URL) and EMU_STATS (stats URL).
start_emulator() {
	local name=$1
	shift
	local out=$RUN/emulator-$name.out
	KVSYNC_EMULATOR_TOKEN=$TOKEN "${BENCH_EMULATOR:-$BIN/kvsync}" emulator --listen 127.0.0.1:0 "$@" >"$out" 2>"$RUN/emulator-$name.log" &
	PIDS+=($!)
	local i
	for ((i = 0; i < 200; i++)); do
		if grep -q 'API base URL: ' "$out" 2>/dev/null; then
			EMU_API=$(sed -n 's/.*API base URL: //p' "$out" | head -1)
			EMU_STATS=${EMU_API%/client/v4}/__emulator/stats
			log "emulator $name: $EMU_API $*"
			return 0
		fi
		sleep 0.05
	done
	echo "bench/run.sh: the emulator did not start; see $RUN/emulator-$name.log" >&2
	exit 1
}

# ----------------------------------------------------------------- tools
command -v go >/dev/null || {
	echo "bench/run.sh: Go is required (https://go.dev/dl/)" >&2
	exit 1
}
if ! command -v curl >/dev/null; then
	log "installing curl with apt-get"
	apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi
log "building kvsync and benchtool"
(cd "$REPO" && go build -o "$BIN/kvsync" ./cmd/kvsync && go build -o "$BIN/benchtool" ./bench/benchtool)
BT=$BIN/benchtool

WRANGLER=
if want wrangler; then
	node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
	if ((node_major < 20)) || ! command -v npm >/dev/null; then
		fail "wrangler: Node.js >= 20 and npm are needed (found node major version $node_major); wrangler $WRANGLER_VERSION not measured"
	else
		WRANGLER=$CACHE/wrangler-$WRANGLER_VERSION/node_modules/.bin/wrangler
		if [[ ! -x $WRANGLER ]]; then
			log "installing wrangler@$WRANGLER_VERSION with npm into $CACHE (once)"
			mkdir -p "$CACHE/wrangler-$WRANGLER_VERSION"
			[[ -f $CACHE/wrangler-$WRANGLER_VERSION/package.json ]] ||
				echo '{"private": true}' >"$CACHE/wrangler-$WRANGLER_VERSION/package.json"
			npm install --prefix "$CACHE/wrangler-$WRANGLER_VERSION" --no-audit --no-fund --no-update-notifier \
				--loglevel=error "wrangler@$WRANGLER_VERSION" >"$RUN/npm-install.log" 2>&1 ||
				{
					cat "$RUN/npm-install.log" >&2
					fail "wrangler: npm install wrangler@$WRANGLER_VERSION failed"
					WRANGLER=
				}
		fi
		if [[ -n $WRANGLER ]]; then
			v=$("$WRANGLER" --version 2>/dev/null | tail -1 || true)
			[[ $v == *"$WRANGLER_VERSION"* ]] || {
				fail "wrangler: $WRANGLER --version says '$v', want $WRANGLER_VERSION"
				WRANGLER=
			}
		fi
	fi
fi

# ----------------------------------------------------------------- trees
declare -A TREE_SPEC=(
	[small]="10000 1024 10"
	[medium]="1000 102400 10"
	[large]="20 26214400 10"
	[huge]="100000 1024 100"
	[million]="1000000 100 0"
)
# The directory fan-out (benchtool gen --dirs) where it is not the default
# 16 x 32. The million tree reproduces issue 14's shape: 259 directories
# below the root (7 top, 252 leaves of about 3,970 files each).
declare -A TREE_DIRS=(
	[million]="7,36"
)
declare -A TREE_FILES TREE_BYTES TREE_SIDECARS
make_tree() {
	local t=$1 files size every
	read -r files size every <<<"${TREE_SPEC[$t]}"
	local dirs=()
	[[ -z ${TREE_DIRS[$t]:-} ]] || dirs=(--dirs "${TREE_DIRS[$t]}")
	"$BT" gen --dir "$OUT/trees/$t" --files "$files" --size "$size" --sidecar-every "$every" --seed 1 "${dirs[@]}" >&2
	local info
	info=$("$BT" treeinfo --dir "$OUT/trees/$t")
	TREE_FILES[$t]=$(sed -n 's/^TREE_FILES=//p' <<<"$info")
	TREE_BYTES[$t]=$(sed -n 's/^TREE_BYTES=//p' <<<"$info")
	TREE_SIDECARS[$t]=$(sed -n 's/^TREE_SIDECARS=//p' <<<"$info")
}
trees=()
for t in small medium large huge million; do
	if want "$t" || { [[ $t == small ]] && { want wrangler || want curl; }; } || { [[ $t == huge ]] && want budget; }; then
		trees+=("$t")
	fi
done
for t in "${trees[@]}"; do
	log "tree $t: ${TREE_SPEC[$t]% *} (files, bytes each)"
	make_tree "$t"
done

# ----------------------------------------------------------------- measuring
# Each sample is one line of $RUN/samples.tsv:
# label tool tree wall_s rss_kib requests writes bulk_writes r429 verified
SAMPLES=$RUN/samples.tsv
: >"$SAMPLES"

# field NAME TEXT: the value of NAME=... in benchtool's output.
field() { sed -n "s/^$1=//p" <<<"$2"; }

# verify LABEL TOOL TREE STATS_OUTPUT: the namespace must hold exactly the
# tree: as many keys as files, the same total bytes, and metadata on one key
# per sidecar, or, from kvsync, on every key (its _kvsync record). Sets
# VERIFIED to yes or NO.
verify() {
	local label=$1 tool=$2 t=$3 st=$4
	local keys bytes meta want_meta=${TREE_SIDECARS[$t]}
	[[ $tool != kvsync ]] || want_meta=${TREE_FILES[$t]}
	keys=$(field KEYS "$st")
	bytes=$(field VALUE_BYTES "$st")
	meta=$(field META_KEYS "$st")
	if [[ $keys == "${TREE_FILES[$t]}" && $bytes == "${TREE_BYTES[$t]}" && $meta == "$want_meta" ]]; then
		VERIFIED=yes
	else
		fail "$label: the namespace holds $keys keys, $bytes bytes, $meta with metadata; the tree has ${TREE_FILES[$t]} files, ${TREE_BYTES[$t]} bytes, ${TREE_SIDECARS[$t]} sidecars"
		VERIFIED=NO
	fi
}

# measure LABEL TOOL TREE NAMESPACE -- command...: runs the command against
# the current emulator, records a sample and checks the namespace.
measure() {
	local label=$1 tool=$2 t=$3 ns=$4
	shift 5
	local pre=$RUN/$label.stats-before m=$RUN/$label.measure
	KVSYNC_EMULATOR_TOKEN=$TOKEN "$BT" stats --url "$EMU_STATS" --save "$pre" >/dev/null
	log "$label: $*"
	local rc=0
	"$BT" measure --out "$m" -- "$@" >"$RUN/$label.out" 2>"$RUN/$label.err" || rc=$?
	if ((rc != 0)); then
		tail -5 "$RUN/$label.err" >&2 || true
		fail "$label: exit status $rc (see $RUN/$label.err)"
	fi
	local st
	st=$(KVSYNC_EMULATOR_TOKEN=$TOKEN "$BT" stats --url "$EMU_STATS" --account "$ACCOUNT" --namespace "$ns" --before "$pre")
	# Kept whole for what samples.tsv has no column for (LISTS).
	printf '%s\n' "$st" >"$RUN/$label.stats"
	local wall rss
	wall=$(field WALL_S "$(cat "$m")")
	rss=$(field RSS_KIB "$(cat "$m")")
	verify "$label" "$tool" "$t" "$st"
	local ok=$VERIFIED
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$tool" "$t" "$wall" "$rss" \
		"$(field REQUESTS "$st")" "$(field WRITES "$st")" "$(field BULK_WRITES "$st")" "$(field R429 "$st")" "$ok" >>"$SAMPLES"
	log "$label: ${wall}s, peak RSS $((rss / 1024)) MiB, $(field REQUESTS "$st") requests ($(field WRITES "$st") writes, $(field R429 "$st") x 429), keys verified: $ok"
}

# ns_for LABEL: the namespace a run of that label publishes into.
ns_for() {
	local ns=${1//[^a-zA-Z0-9-]/-}-$$
	echo "${ns:0:32}"
}

# run_kvsync LABEL TREE [NAMESPACE]: one `kvsync sync` with defaults and a
# fresh state directory, into a fresh namespace unless one is given.
run_kvsync() {
	local label=$1 t=$2
	local ns=${3:-$(ns_for "$label")}
	local sd=$RUN/state-$label
	rm -rf "$sd"
	CLOUDFLARE_API_TOKEN=$TOKEN measure "$label" kvsync "$t" "$ns" -- \
		"$BIN/kvsync" sync --dir "$OUT/trees/$t" --account-id "$ACCOUNT" --namespace-id "$ns" \
		--api-base-url "$EMU_API" --state-dir "$sd" --metrics-listen off
	rm -rf "$sd"
}

# run_wrangler LABEL PAIRS direct|npx: `wrangler kv bulk put`, either the
# installed binary itself or through `npx wrangler` as people type it (npx
# adds npm's own start-up: it resolves the package before starting it).
run_wrangler() {
	local label=$1 pairs=$2 how=$3
	local ns=${label//[^a-zA-Z0-9-]/-}-$$
	ns=${ns:0:32}
	local home=$RUN/wrangler-home
	mkdir -p "$home"
	local cmd=("$WRANGLER") tool=wrangler
	if [[ $how == npx ]]; then
		tool="npx wrangler"
		# From the install directory, so npx finds the local wrangler; --no
		# forbids it to download anything.
		cd "$CACHE/wrangler-$WRANGLER_VERSION"
		cmd=(npx --no wrangler)
	else
		cd "$home"
	fi
	# Everything wrangler reads from the environment points at the emulator;
	# metrics, the banner and its update check (which would call the npm
	# registry) are off. There is no wrangler.toml: --namespace-id says it all.
	HOME=$home XDG_CONFIG_HOME=$home/.config \
		CLOUDFLARE_API_BASE_URL=$EMU_API CLOUDFLARE_API_TOKEN=$TOKEN CLOUDFLARE_ACCOUNT_ID=$ACCOUNT \
		WRANGLER_SEND_METRICS=false WRANGLER_HIDE_BANNER=true CI=true NO_UPDATE_NOTIFIER=1 \
		npm_config_update_notifier=false npm_config_cache=$CACHE/npm \
		measure "$label" "$tool" small "$ns" -- "${cmd[@]}" kv bulk put "$pairs" --namespace-id="$ns" --remote
	cd "$REPO"
}

run_curl() {
	local label=$1 list=$2
	local ns=${label//[^a-zA-Z0-9-]/-}-$$
	ns=${ns:0:32}
	CLOUDFLARE_API_TOKEN=$TOKEN measure "$label" curl small "$ns" -- \
		bash "$BENCH_DIR/curl-loop.sh" "$list" "$EMU_API/accounts/$ACCOUNT/storage/kv/namespaces/$ns"
}

# --------------------------------------------------------------- scenarios
# One emulator without a budget serves every throughput scenario and the
# comparison, so all tools meet the same server in the same run.
start_emulator main

if want wrangler && [[ -n $WRANGLER ]]; then
	# Not part of wrangler's time: turning the tree into wrangler's JSON.
	"$BT" measure --out "$RUN/pairs.measure" -- "$BT" pairs --dir "$OUT/trees/small" --out "$RUN/small-pairs.json"
	PAIRS_S=$(field WALL_S "$(cat "$RUN/pairs.measure")")
	# One untimed run of each warms the page cache and Node's compile cache,
	# as the small tree was warmed by its generation: every timed run is warm.
	run_wrangler wrangler-warmup "$RUN/small-pairs.json" direct
	run_wrangler wrangler-npx-warmup "$RUN/small-pairs.json" npx
fi
if want small; then
	run_kvsync kvsync-small-warmup small
fi
for ((r = 1; r <= REPEAT; r++)); do
	if want small; then run_kvsync "kvsync-small-$r" small; fi
	if want wrangler && [[ -n $WRANGLER ]]; then
		run_wrangler "wrangler-small-$r" "$RUN/small-pairs.json" direct
		run_wrangler "wrangler-npx-small-$r" "$RUN/small-pairs.json" npx
	fi
done
if want curl; then
	"$BT" filelist --dir "$OUT/trees/small" --out "$RUN/small-files.tsv"
	run_curl curl-small "$RUN/small-files.tsv"
fi
for t in medium large huge; do
	if want "$t"; then run_kvsync "kvsync-$t" "$t"; fi
done

if want budget; then
	# A fresh emulator with Cloudflare's budget: 1,200 requests per 5
	# minutes for the whole account; over it, every call is refused with 429
	# for 5 minutes. kvsync runs with its defaults (1,000 requests per 300 s,
	# burst 100).
	start_emulator budget --budget 1200 --budget-window 5m
	run_kvsync kvsync-huge-budget huge
	# The same tree again with a new, empty state directory, as a CI runner
	# does: the listing (100 pages) must show every key current.
	run_kvsync kvsync-huge-republish huge "$(ns_for kvsync-huge-budget)"
fi

# ----------------------------------------------------------------- million
# Issue 14: on one 1,000,000-file tree, in one run, kvsync beside the floor
# any tool that decides by stat alone has: a stat-only walk of the same tree.
# Every figure below is set by million_scenario and printed by the report.

# MLOAD[LABEL]: the 1-minute load average as that step started (the machine
# may be shared; see the report).
declare -A MLOAD
mload() { MLOAD[$1]=$(cut -d' ' -f1 /proc/loadavg); }

# vm_kib PID FIELD: a field of /proc/PID/status in KiB (VmRSS, VmHWM).
vm_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# cpu_ticks PID: user + system CPU of a running process in clock ticks
# (/proc/PID/stat fields 14 and 15, counted after the parenthesised name).
cpu_ticks() {
	local st
	st=$(<"/proc/$1/stat")
	awk '{ print $12 + $13 }' <<<"${st##*) }"
}

# stat_walk LABEL: times `find` stat'ing every file of the million tree, its
# output discarded; sets WALK_S.
stat_walk() {
	local m=$RUN/$1.measure
	mload "$1"
	log "$1: find $OUT/trees/million -type f -printf '%s %T@\\n' >/dev/null"
	"$BT" measure --out "$m" -- find "$OUT/trees/million" -type f -printf '%s %T@\n' >/dev/null
	WALK_S=$(field WALL_S "$(cat "$m")")
	log "$1: ${WALK_S}s"
}

# million_sync LABEL NAMESPACE STATE_DIR [flags...]: one `kvsync sync` of the
# million tree, the state directory kept for the runs after it.
million_sync() {
	local label=$1 ns=$2 sd=$3
	shift 3
	mload "$label"
	CLOUDFLARE_API_TOKEN=$TOKEN measure "$label" kvsync million "$ns" -- \
		"$BIN/kvsync" sync --dir "$OUT/trees/million" --account-id "$ACCOUNT" --namespace-id "$ns" \
		--api-base-url "$EMU_API" --state-dir "$sd" --metrics-listen off "$@"
}

# million_run LABEL NAMESPACE STATE_DIR: `kvsync run` on the unchanged tree,
# timed from its start until /readyz answers 200, then left idle for
# IDLE_S seconds and stopped with SIGTERM. Sets RUN_READY_S, RUN_RSS_KIB
# (VmRSS after the idle time), RUN_HWM_KIB (VmHWM, its peak so far),
# RUN_IDLE_CPU_S, RUN_STOP_S and, from the emulator, RUN_REQUESTS,
# RUN_LISTS, RUN_WRITES and RUN_VERIFIED.
IDLE_S=10
READY_TIMEOUT_S=1800
million_run() {
	local label=$1 ns=$2 sd=$3
	local pre=$RUN/$label.stats-before port
	port=$("$BT" freeport)
	mload "$label"
	KVSYNC_EMULATOR_TOKEN=$TOKEN "$BT" stats --url "$EMU_STATS" --save "$pre" >/dev/null
	log "$label: kvsync run, /readyz on 127.0.0.1:$port"
	local t0 pid now
	t0=$(date +%s%N)
	CLOUDFLARE_API_TOKEN=$TOKEN "$BIN/kvsync" run --dir "$OUT/trees/million" --account-id "$ACCOUNT" --namespace-id "$ns" \
		--api-base-url "$EMU_API" --state-dir "$sd" --metrics-listen "127.0.0.1:$port" >"$RUN/$label.out" 2>"$RUN/$label.err" &
	pid=$!
	PIDS+=("$pid")
	RUN_READY_S="" RUN_RSS_KIB="" RUN_HWM_KIB="" RUN_IDLE_CPU_S="" RUN_STOP_S=""
	# Polled every 0.1 s, so ready is late by at most that and one curl.
	while :; do
		if curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$port/readyz"; then
			now=$(date +%s%N)
			RUN_READY_S=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
			break
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -5 "$RUN/$label.err" >&2 || true
			fail "$label: kvsync run exited before it was ready (see $RUN/$label.err)"
			break
		fi
		now=$(date +%s%N)
		if (((now - t0) / 1000000000 > READY_TIMEOUT_S)); then
			fail "$label: not ready after $READY_TIMEOUT_S s"
			break
		fi
		sleep 0.1
	done
	if [[ -n $RUN_READY_S ]]; then
		log "$label: ready after ${RUN_READY_S}s, RSS $(($(vm_kib "$pid" VmRSS) / 1024)) MiB; idle for ${IDLE_S}s"
		# Sampled each second, so the log shows whether it settled; the last
		# sample is the steady figure. CPU over the same seconds says whether
		# it was idle.
		local c0 c1 i
		c0=$(cpu_ticks "$pid")
		for ((i = 1; i <= IDLE_S; i++)); do
			sleep 1
			printf '%d\t%s\n' "$i" "$(vm_kib "$pid" VmRSS)" >>"$RUN/$label.rss"
		done
		c1=$(cpu_ticks "$pid")
		RUN_RSS_KIB=$(vm_kib "$pid" VmRSS)
		RUN_HWM_KIB=$(vm_kib "$pid" VmHWM)
		RUN_IDLE_CPU_S=$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }')
		log "$label: steady RSS $((RUN_RSS_KIB / 1024)) MiB, peak $((RUN_HWM_KIB / 1024)) MiB, ${RUN_IDLE_CPU_S}s of CPU while idle"
	fi
	t0=$(date +%s%N)
	kill -TERM "$pid" 2>/dev/null || true
	local rc=0
	wait "$pid" || rc=$?
	now=$(date +%s%N)
	RUN_STOP_S=$(awk -v a="$t0" -v b="$now" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
	local p keep=()
	for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
	((rc == 0)) || fail "$label: kvsync run exited with status $rc after SIGTERM (see $RUN/$label.err)"
	local st
	st=$(KVSYNC_EMULATOR_TOKEN=$TOKEN "$BT" stats --url "$EMU_STATS" --account "$ACCOUNT" --namespace "$ns" --before "$pre")
	printf '%s\n' "$st" >"$RUN/$label.stats"
	RUN_REQUESTS=$(field REQUESTS "$st")
	RUN_LISTS=$(field LISTS "$st")
	RUN_WRITES=$(field WRITES "$st")
	verify "$label" kvsync million "$st"
	RUN_VERIFIED=$VERIFIED
	log "$label: stopped ${RUN_STOP_S}s after SIGTERM; $RUN_REQUESTS requests ($RUN_LISTS listings, $RUN_WRITES writes), keys verified: $RUN_VERIFIED"
}

million_scenario() {
	# An emulator of its own: a million keys (twice: two first publishes)
	# stay out of the other scenarios' server, and its counters start at 0.
	start_emulator million
	local ns ns_free sd=$RUN/state-million sd_free=$RUN/state-million-free sd_empty=$RUN/state-million-empty
	ns=$(ns_for million)
	ns_free=$(ns_for million-free)
	rm -rf "$sd" "$sd_free" "$sd_empty"

	# The floor. Nothing is dropped from the cache (that needs root and would
	# measure the disk, not the tools): the tree was just generated or read
	# by treeinfo, and one untimed walk goes first, so dentries and inodes
	# are in memory for the walk and for every kvsync run after it.
	stat_walk million-walk-warmup
	stat_walk million-walk
	# The walk warms the inodes, not the contents: files evicted since they
	# were written (another workload on the machine) would make the first
	# publish, the first run to read them, measure the disk. One untimed
	# read of every file's content puts them in the page cache too.
	log "million-read-warmup: find $OUT/trees/million -type f -print0 | xargs -0 cat >/dev/null"
	find "$OUT/trees/million" -type f -print0 | xargs -0 cat >/dev/null
	MILLION_WALK_S=$WALK_S

	# 2. First publish with kvsync's defaults, then again into another fresh
	# namespace with the limiter raised far above the ~200 bulk writes and
	# the listing, so that it never waits: the difference is the time spent
	# waiting on kvsync's own rate limiter (default 1,000 per 300 s, burst
	# 100). The emulator enforces no budget here.
	million_sync million-first "$ns" "$sd"
	cat >"$RUN/million-free.yaml" <<-EOF
		# bench/run.sh: limiter raised so that it never waits (rate x 300 +
		# burst <= budget, as kvsync requires).
		api:
		  rate: 1000
		  burst: 10000
		  budget: 310000
		syncs:
		  - dir: $OUT/trees/million
		    namespace_id: $ns_free
	EOF
	million_sync million-first-free "$ns_free" "$sd_free" --config "$RUN/million-free.yaml"
	rm -rf "$sd_free"

	# 3-5. No-op syncs of the unchanged tree into the namespace of the first
	# publish: with its state and the listing skipped, with its state and the
	# default listing, and with an empty state directory (a CI runner).
	million_sync million-noop-trust "$ns" "$sd" --trust-state
	million_sync million-noop-list "$ns" "$sd"
	million_sync million-noop-empty "$ns" "$sd_empty"
	rm -rf "$sd_empty"

	# 6. `kvsync plan` with the state of the first publish, listing the
	# namespace with the limiter raised (its 1,000 list requests would
	# otherwise wait on it as the listing no-op does), and `kvsync check`,
	# which hashes every file with no store: neither may hold the tree.
	sed "s/namespace_id: $ns_free/namespace_id: $ns/" "$RUN/million-free.yaml" >"$RUN/million-plan.yaml"
	mload million-plan
	CLOUDFLARE_API_TOKEN=$TOKEN measure million-plan kvsync million "$ns" -- \
		"$BIN/kvsync" plan --dir "$OUT/trees/million" --account-id "$ACCOUNT" --namespace-id "$ns" \
		--api-base-url "$EMU_API" --state-dir "$sd" --config "$RUN/million-plan.yaml"
	grep -q '^plan: 0 to write' "$RUN/million-plan.out" ||
		fail "million-plan: the plan of the unchanged tree is not empty: $(tail -1 "$RUN/million-plan.out")"
	mload million-check
	CLOUDFLARE_API_TOKEN=$TOKEN measure million-check kvsync million "$ns" -- \
		"$BIN/kvsync" check --dir "$OUT/trees/million" --account-id "$ACCOUNT" --namespace-id "$ns"

	# 7. The daemon on the unchanged tree with the state of the runs above.
	million_run million-run "$ns" "$sd"
	rm -rf "$sd"

	# The floor again, to show how far the shared machine moved meanwhile.
	stat_walk million-walk-after
	MILLION_WALK_AFTER_S=$WALK_S
}
if want million; then million_scenario; fi

# ------------------------------------------------------------------ report
# median_line LABEL_PREFIX: the sample with the median wall time.
median_line() {
	local n
	n=$(grep -c "^$1" "$SAMPLES" || true)
	((n > 0)) || return 0
	grep "^$1" "$SAMPLES" | sort -t$'\t' -k4,4g | sed -n "$(((n + 1) / 2))p"
}
samples_of() { grep "^$1" "$SAMPLES" | cut -f4 | sort -g | paste -sd' ' -; }
min_of() { grep "^$1" "$SAMPLES" | cut -f4 | sort -g | head -1; }

human_size() { awk -v b="$1" 'BEGIN { if (b >= 1048576) printf "%g MiB", b/1048576; else printf "%g KiB", b/1024 }'; }

# msample LABEL FIELD: one field of a million-tree sample: wall, rss (KiB),
# req, writes, ok from samples.tsv; cpu from its measure record; lists from
# its stats.
msample() {
	local line
	line=$(grep -P "^$1\t" "$SAMPLES" || true)
	case $2 in
	wall) cut -f4 <<<"$line" ;;
	rss) cut -f5 <<<"$line" ;;
	req) cut -f6 <<<"$line" ;;
	writes) cut -f7 <<<"$line" ;;
	ok) cut -f10 <<<"$line" ;;
	cpu) field CPU_S "$(cat "$RUN/$1.measure" 2>/dev/null)" ;;
	lists) field LISTS "$(cat "$RUN/$1.stats" 2>/dev/null)" ;;
	esac
}

# verdict COND: "met" when the awk condition holds, else "MISSED".
verdict() { awk "BEGIN { print (($1) ? \"met\" : \"MISSED\") }"; }

# million_report: the million scenario's section of results.md.
million_report() {
	local w=${MILLION_WALK_S:-} l
	echo
	echo "### ${TREE_FILES[million]} files x $((TREE_BYTES[million] / TREE_FILES[million])) bytes (issue 14)"
	echo
	if [[ -z $w ]]; then
		echo "Not measured: the stat-only walk did not run."
		return 0
	fi
	echo "Tree: \`benchtool gen --files ${TREE_FILES[million]} --size $((TREE_BYTES[million] / TREE_FILES[million])) --dirs ${TREE_DIRS[million]} --seed 1\`, $(find "$OUT/trees/million" -mindepth 1 -type d | wc -l) directories below the root, under $OUT/trees/million. It is in the page cache throughout (nothing is dropped: an untimed walk precedes the timed one, and an untimed read of every file's content follows it), so every figure is warm. A fresh \`kvsync emulator\` of its own, no budget. Every \`kvsync sync\` runs with \`--metrics-listen off\`. Load avg is the 1-minute load average as each step started (the header has it at the end)."
	echo
	echo "| What | Wall s | x stat walk | CPU s | Peak RSS MiB | Requests | Listings | Writes | Keys verified | Load avg |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
	awk -v w="$w" -v ld="${MLOAD[million-walk]}" 'BEGIN { printf "| stat-only walk: `find DIR -type f -printf '"'"'%%s %%T@\\n'"'"' >/dev/null` | %.3f | 1.0 | | | | | | | %s |\n", w, ld }'
	mrow() {
		[[ -n $(msample "$1" wall) ]] || return 0
		awk -v d="$2" -v wall="$(msample "$1" wall)" -v w="$w" -v cpu="$(msample "$1" cpu)" -v rss="$(msample "$1" rss)" \
			-v req="$(msample "$1" req)" -v lists="$(msample "$1" lists)" -v wr="$(msample "$1" writes)" -v ok="$(msample "$1" ok)" -v ld="${MLOAD[$1]:-}" \
			'BEGIN { printf "| %s | %.3f | %.1f | %.2f | %.1f | %d | %d | %d | %s | %s |\n", d, wall, wall/w, cpu, rss/1024, req, lists, wr, ok, ld }'
	}
	mrow million-first "first publish: \`kvsync sync\`, fresh state dir, fresh namespace, default limiter"
	mrow million-first-free "first publish, limiter raised so it never waits (rate 1000/s, burst 10000)"
	mrow million-noop-trust "no-op \`kvsync sync --trust-state\`, state present"
	mrow million-noop-list "no-op \`kvsync sync\`, state present, lists the namespace (default)"
	mrow million-noop-empty "no-op \`kvsync sync\`, empty state dir (lists, hashes every file)"
	mrow million-plan "\`kvsync plan\`, state present, lists the namespace (limiter raised): nothing to do"
	mrow million-check "\`kvsync check\` (no state: reads and hashes every file)"
	if [[ -n ${RUN_READY_S:-} ]]; then
		awk -v r="$RUN_READY_S" -v w="$w" -v hwm="$RUN_HWM_KIB" -v req="$RUN_REQUESTS" -v lists="$RUN_LISTS" -v wr="$RUN_WRITES" -v ok="$RUN_VERIFIED" \
			-v ld="${MLOAD[million-run]:-}" \
			'BEGIN { printf "| `kvsync run`, state present, unchanged tree: start until /readyz is 200 | %.3f | %.1f | | %.1f (VmHWM after %d s idle) | %d | %d | %d | %s | %s |\n", r, r/w, hwm/1024, '"$IDLE_S"', req, lists, wr, ok, ld }'
		awk -v rss="$RUN_RSS_KIB" -v cpu="$RUN_IDLE_CPU_S" -v stop="$RUN_STOP_S" \
			'BEGIN { printf "| `kvsync run`, steady: VmRSS after %d s idle (then SIGTERM: exited %.3f s later) | | | %.2f (while idle) | %.1f (VmRSS) | | | | | |\n", '"$IDLE_S"', stop, cpu, rss/1024 }'
	fi
	[[ -z ${MILLION_WALK_AFTER_S:-} ]] || echo "| stat-only walk again, after all of the above (how far the shared machine moved) | $MILLION_WALK_AFTER_S | $(awk -v a="$MILLION_WALK_AFTER_S" -v w="$w" 'BEGIN { printf "%.1f", a/w }') | | | | | | | ${MLOAD[million-walk-after]:-} |"
	echo
	echo "Requests, listings and writes are the emulator's counts for the run; listings are list-keys pages of up to 1,000 keys; the rest of the requests not written are the reachability probe and reads. CPU s is user + system time of the kvsync process (\`wait4\`). Ratios are to the first timed stat walk."
	echo
	l=million-noop-trust
	if [[ -n $(msample $l wall) ]]; then
		awk -v t="$(msample $l wall)" -v w="$w" -v r="$(msample $l req)" -v wr="$(msample $l writes)" 'BEGIN {
			printf "- No-op `kvsync sync --trust-state`: **%.3f s = %.1fx the stat walk** (target: at most 3x: %s); %d request(s), %d writes (want 1, the reachability probe, and 0: %s)\n", t, t/w, (t <= 3*w ? "met" : "MISSED"), r, wr, (r == 1 && wr == 0 ? "met" : "MISSED") }'
	fi
	l=million-noop-list
	if [[ -n $(msample $l wall) ]]; then
		awk -v t="$(msample $l wall)" -v w="$w" -v r="$(msample $l req)" -v li="$(msample $l lists)" -v wr="$(msample $l writes)" 'BEGIN {
			printf "- No-op `kvsync sync` with its default listing: **%.3f s = %.1fx the stat walk** (reported, no target), **%d listings** of %d requests, %d writes (want 0: %s)\n", t, t/w, li, r, wr, (wr == 0 ? "met" : "MISSED") }'
	fi
	l=million-noop-empty
	if [[ -n $(msample $l wall) ]]; then
		awk -v t="$(msample $l wall)" -v w="$w" -v r="$(msample $l req)" -v li="$(msample $l lists)" -v wr="$(msample $l writes)" 'BEGIN {
			printf "- No-op `kvsync sync` with an empty state dir: %.3f s = %.1fx the stat walk (reported, no target), %d listings of %d requests, %d writes (want 0: %s)\n", t, t/w, li, r, wr, (wr == 0 ? "met" : "MISSED") }'
	fi
	if [[ -n ${RUN_READY_S:-} ]]; then
		awk -v r="$RUN_READY_S" -v w="$w" 'BEGIN {
			printf "- `kvsync run` ready after **%.3f s** (target: at most 3 x %.3f + 2 = %.3f s: %s)\n", r, w, 3*w + 2, (r <= 3*w + 2 ? "met" : "MISSED") }'
		awk -v rss="$RUN_RSS_KIB" -v cpu="$RUN_IDLE_CPU_S" 'BEGIN {
			printf "- `kvsync run` steady RSS **%.1f MiB** after '"$IDLE_S"' s idle, %.2f s of CPU in those seconds (target: at most 150 MiB: %s)\n", rss/1024, cpu, (rss <= 150*1024 ? "met" : "MISSED") }'
	fi
	awk -F'\t' '$3 == "million" && $2 == "kvsync" { if ($5 > m) { m = $5; l = $1 }; all = all sprintf("%s%s %.0f", (all == "" ? "" : ", "), $1, $5/1024) } END {
		if (m) printf "- Peak RSS of every `kvsync sync`, `plan` and `check` of the tree at most 200 MiB: largest **%.1f MiB** (%s) (%s); each, MiB: %s\n", m/1024, l, (m <= 200*1024 ? "met" : "MISSED"), all }' "$SAMPLES"
	local a b
	a=$(msample million-first wall)
	b=$(msample million-first-free wall)
	if [[ -n $a && -n $b ]]; then
		# The default bucket (burst 100, refilled at 1,000 / 300 s) admits
		# request n no sooner than (n - 100) / 3.33 s after the start.
		awk -v a="$a" -v b="$b" -v ca="$(msample million-first cpu)" -v cb="$(msample million-first-free cpu)" -v n="$(msample million-first req)" 'BEGIN {
			floor = (n > 100 ? (n - 100) / (1000 / 300) : 0)
			printf "- First publish: %.3f s with the default limiter, **%.3f s with it raised** (target: at most 30 s of kvsync'"'"'s own work: %s); the difference, %.1f s, is the first one'"'"'s waiting on kvsync'"'"'s own rate limiter and the machine'"'"'s noise: the default bucket (burst 100, 1,000 per 300 s) admits the last of its %d requests no sooner than %.1f s after the start. kvsync'"'"'s CPU: %.2f s and %.2f s. The raised run'"'"'s wall time still includes the emulator'"'"'s work on the same cores.\n", a, b, (b <= 30 ? "met" : "MISSED"), a - b, n, floor, ca, cb }'
	fi
}

REPORT=$RUN/results.md
{
	echo "## kvsync benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo
	echo "Machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	echo "kvsync $(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown), $(go version | cut -d' ' -f3), wrangler $([[ -n $WRANGLER ]] && echo "$WRANGLER_VERSION" || echo "not run"), Node $(node --version 2>/dev/null || echo none), $(curl --version | head -1 | cut -d' ' -f1-2)."
	echo "Emulator: \`${BENCH_EMULATOR:+$BENCH_EMULATOR }kvsync emulator\` on 127.0.0.1, in memory; the runs of the small tree are the median of $REPEAT."
	# The scenarios of issue 5; only the million scenario reports apart.
	if [[ ,$SCENARIOS, =~ ,(small|medium|large|huge|budget|wrangler|curl), ]]; then
		echo
		echo "| Run | Tool | Tree | Wall s | Files/s | MB/s | API requests | Write requests | 429s | Peak RSS MiB | Keys verified |"
		echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
		row() {
			local line=$1 note=${2:-}
			[[ -n $line ]] || return 0
			local label tool t wall rss req wr r429 ok
			IFS=$'\t' read -r label tool t wall rss req wr _ r429 ok <<<"$line"
			local files=${TREE_FILES[$t]} bytes=${TREE_BYTES[$t]}
			awk -v l="$label$note" -v tool="$tool" -v tree="$files x $(human_size $((bytes / files)))" -v w="$wall" -v f="$files" -v b="$bytes" \
				-v rss="$rss" -v req="$req" -v wr="$wr" -v r429="$r429" -v ok="$ok" \
				'BEGIN { printf "| %s | %s | %s | %.3f | %.0f | %.1f | %d | %d | %d | %.1f | %s |\n", l, tool, tree, w, f/w, b/1e6/w, req, wr, r429, rss/1024, ok }'
		}
		row "$(median_line 'kvsync-small-[0-9]')" " (median)"
		row "$(median_line 'wrangler-small-[0-9]')" " (median)"
		row "$(median_line 'wrangler-npx-small-[0-9]')" " (median)"
		row "$(median_line curl-small)"
		for t in medium large huge; do row "$(median_line "kvsync-$t"$'\t')"; done
		row "$(median_line kvsync-huge-budget)" " (1,200 req / 5 min budget)"
		row "$(median_line kvsync-huge-republish)" " (unchanged, empty state dir, same budget)"
		echo
		echo "All samples of the small tree (wall s): kvsync $(samples_of 'kvsync-small-[0-9]')${WRANGLER:+; wrangler $(samples_of 'wrangler-small-[0-9]'); npx wrangler $(samples_of 'wrangler-npx-small-[0-9]')}."
		if [[ -n ${PAIRS_S:-} ]]; then
			echo "Not in wrangler's time: writing its pairs.json from the tree took $PAIRS_S s (benchtool pairs); kvsync's time includes reading the tree."
		fi
		echo
		k=$(median_line 'kvsync-small-[0-9]' | cut -f4)
		if [[ -n $k ]]; then
			if [[ -n $WRANGLER ]]; then
				w=$(median_line 'wrangler-small-[0-9]' | cut -f4)
				[[ -z $w ]] || awk -v k="$k" -v w="$w" 'BEGIN { printf "- kvsync vs `wrangler kv bulk put` (the installed binary), 10,000 x 1 KiB: %.3f s vs %.3f s, **%.1fx faster** (target: at least 5x: %s)\n", k, w, w/k, (w/k >= 5 ? "met" : "MISSED") }'
				w=$(median_line 'wrangler-npx-small-[0-9]' | cut -f4)
				[[ -z $w ]] || awk -v k="$k" -v w="$w" 'BEGIN { printf "- kvsync vs `npx wrangler kv bulk put`, 10,000 x 1 KiB: %.3f s vs %.3f s, **%.1fx faster** (target: at least 5x: %s)\n", k, w, w/k, (w/k >= 5 ? "met" : "MISSED") }'
			fi
			if [[ -n $WRANGLER ]] && ((REPEAT > 1)); then
				# On a shared machine the fastest run is the least disturbed one.
				awk -v k="$(min_of 'kvsync-small-[0-9]')" -v w="$(min_of 'wrangler-small-[0-9]')" -v n="$(min_of 'wrangler-npx-small-[0-9]')" 'BEGIN {
					if (k > 0 && w > 0 && n > 0) printf "- Best of %d runs each: kvsync %.3f s, wrangler %.3f s (%.1fx), npx wrangler %.3f s (%.1fx)\n", '"$REPEAT"', k, w, w/k, n, n/k }'
			fi
			if want curl; then
				c=$(median_line curl-small | cut -f4)
				[[ -z $c ]] || awk -v k="$k" -v c="$c" 'BEGIN { printf "- kvsync vs a per-file curl loop, 10,000 x 1 KiB, no budget: %.3f s vs %.3f s, **%.0fx faster**\n", k, c, c/k }'
			fi
			wr=$(median_line 'kvsync-small-[0-9]' | cut -f7)
			echo "- kvsync write requests for 10,000 x 1 KiB: **$wr** (target: at most 2: $( ((wr <= 2)) && echo met || echo MISSED))"
		fi
		echo "- A per-file uploader under the budget is capped at 1,100 requests per 300 s (the same 100 of headroom kvsync keeps): computed, not measured, 10,000 files take 10,000 / (1,100 / 300 s) = $(awk 'BEGIN { printf "%.0f s (%.0f min)", 10000/(1100/300), 10000/(1100/300)/60 }') and 100,000 files $(awk 'BEGIN { printf "%.0f s (%.1f h)", 100000/(1100/300), 100000/(1100/300)/3600 }')."
		b=$(median_line kvsync-huge-budget)
		if [[ -n $b ]]; then
			IFS=$'\t' read -r _ _ _ bw brss breq bwr _ b429 bok <<<"$b"
			awk -v w="$bw" -v r="$breq" -v wr="$bwr" -v q="$b429" -v ok="$bok" -v rss="$brss" 'BEGIN {
				printf "- 100,000 x 1 KiB under the 1,200 / 5 min budget: **%.1f s** (target: under 60 s: %s), %d requests (%d writes), **%d x 429** (target: 0: %s), keys verified: %s, peak RSS %.1f MiB; %.0fx faster than the computed per-file figure\n", w, (w < 60 && ok == "yes" ? "met" : "MISSED"), r, wr, q, (q == 0 ? "met" : "MISSED"), ok, rss/1024, (100000/(1100/300))/w }'
		fi
		b=$(median_line kvsync-huge-republish)
		if [[ -n $b ]]; then
			IFS=$'\t' read -r _ _ _ bw _ breq bwr _ b429 bok <<<"$b"
			awk -v w="$bw" -v r="$breq" -v wr="$bwr" -v q="$b429" -v ok="$bok" 'BEGIN {
				printf "- Republishing the 100,000 unchanged files with an empty state directory: **%.1f s**, **%d requests, %d writes** (target: 0 writes and at most 101 requests: %s), %d x 429, keys verified: %s\n", w, r, wr, (wr == 0 && r <= 101 && ok == "yes" ? "met" : "MISSED"), q, ok }'
		fi
		# Every kvsync run counts, warm-ups included: the target is for every
		# tree of issue 5; the million tree has its own (below).
		awk -F'\t' '$2 == "kvsync" && $3 != "million" { if ($5 > m) { m = $5; l = $1 } } END {
			if (m) printf "- kvsync'"'"'s largest peak RSS over the trees run: **%.1f MiB** (%s) (target: under 100 MiB: %s)\n", m/1024, l, (m < 100*1024 ? "met" : "MISSED") }' "$SAMPLES"
	fi
	if want million; then million_report; fi
	if ((${#FAILED[@]})); then
		echo
		echo "**Failures:**"
		printf -- '- %s\n' "${FAILED[@]}"
	fi
} >"$REPORT"
cp "$REPORT" "$OUT/results.md"
rm -f "$RUN/small-pairs.json" "$RUN/small-files.tsv" # 10 MB of inputs, regenerated each run
echo
cat "$REPORT"
echo
log "results: $REPORT (also $OUT/results.md); logs and samples in $RUN"
((${#FAILED[@]} == 0))
