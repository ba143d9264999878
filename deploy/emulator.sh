# deploy/emulator.sh: sourced by the deployment tests, which define die.
#
# start_emulator BIN TOKEN DIR starts `BIN emulator` on a free loopback port,
# its output in DIR/emulator.out and DIR/emulator.err, and sets emu_pid and
# base (the API base URL) once it is serving; the caller stops emu_pid.
start_emulator() {
	local bin=$1 token=$2 dir=$3
	: >"$dir/emulator.out" # exists before the background child opens it
	# The token goes in the environment, where ps does not show it.
	KVSYNC_EMULATOR_TOKEN=$token "$bin" emulator --listen 127.0.0.1:0 >"$dir/emulator.out" 2>"$dir/emulator.err" &
	emu_pid=$!
	base=
	for _ in $(seq 1 100); do
		base=$(sed -n 's/.*API base URL: \(http:[^[:space:]]*\).*/\1/p' "$dir/emulator.out")
		[ -n "$base" ] && break
		kill -0 "$emu_pid" 2>/dev/null || { cat "$dir/emulator.err" >&2; die "emulator exited"; }
		sleep 0.1
	done
	[ -n "$base" ] || { cat "$dir/emulator.err" >&2; die "emulator printed no base URL within 10s"; }
	case $base in http://127.0.0.1:*) ;; *) die "emulator is not on loopback: $base" ;; esac
}
