#!/usr/bin/env bash
# A multi-node replmesh cluster on one machine, left running (make
# cluster-up / make cluster-down; docs/quickstart.md walks through it):
# three brokers joined into one cluster, a stores primary and standby, and
# two products instances (examples/marketplace/cmd/*), all on 127.0.0.1 and
# all reading examples/marketplace/config/modes.yaml. The brokers run with a
# 2s lease (a dead stores primary is replaced after about 2s); stores runs
# with -min-sync-standbys 1 (a write returns once the standby holds it).
#
# Security is on: `up` makes a development CA and a certificate per
# process with `replctl tls` in DIR/tls (kept across down/up), and every
# link runs on mTLS with identities: brokers with -tls-* (broker
# certificates), the access policy examples/marketplace/config/policy.yaml
# and an encrypted gossip (DIR/tls/gossip.key); stores and products with
# -tls-* (their instance's certificate) and -policy; replctl with the admin
# certificate DIR/tls/admin-replctl.pem (cluster.env exports
# REPLMESH_TLS_CA, REPLMESH_TLS_CERT and REPLMESH_TLS_KEY). REPLMESH_INSECURE=1
# runs `up` in plaintext instead (development on loopback only; it removes
# DIR/tls).
#
#   cluster.sh up [DIR]                starts it and waits until it is ready
#   cluster.sh status [DIR]            which recorded processes are alive
#   cluster.sh start NAME [DIR]        starts one recorded process again
#                                      (e.g. a stores instance you killed)
#   cluster.sh down [-purge] [DIR]     stops it; -purge also removes DIR
#
# It runs the binaries of `make build` (bin/replbroker, bin/replctl,
# bin/stores, bin/products; REPLMESH_BIN names another directory) and
# needs only bash and the usual tools (awk, sed, ps).
#
# DIR (default $REPLMESH_CLUSTER_DIR, else $TMPDIR/replmesh-cluster) holds
#   pids            one "NAME PID" line per process started
#   cluster.env     the addresses, as shell variables (. DIR/cluster.env)
#   logs/NAME.log   one log per process
#   data/NAME/      the data dir of each stores and products instance
#   tls/            the dev CA (ca.pem, ca-key.pem), each process's
#                   certificate and key, the admin's, gossip.key
#   run/NAME.cmd    each process's command line (NUL-separated), used to
#                   restart it and to check that a pid still is that process
#
# Ports, from REPLMESH_CLUSTER_PORT_BASE (default 27600), all on 127.0.0.1:
#   broker-N (N=1..3): gRPC BASE+10(N-1), gossip +1 (TCP and UDP), HTTP +2
#   stores-1: HTTP BASE+30, replication +31; stores-2: HTTP +32, replication +33
#   products-1: HTTP BASE+40, replication +41; products-2: HTTP +42, replication +43
# `up` checks that every one of them is free before it starts anything.
#
# Other settings: REPLMESH_CLUSTER_TIMEOUT (seconds `up` waits for the
# cluster to be ready, default 60), REPLMESH_CLUSTER_STOP_TIMEOUT (seconds
# `down` waits for each process after SIGTERM before SIGKILL, default 10).
#
# Exit codes: 0 done; 1 failed (up: the cluster did not come up, see the
# log tails it prints; status: some process is not running); 2 usage error
# or nothing recorded in DIR.
set -euo pipefail

prog=$(basename "$0")
die() {
	echo "$prog: $*" >&2
	exit 2
}

root=$(cd "$(dirname "$0")/../.." && pwd -P)
bin=${REPLMESH_BIN:-$root/bin}
modes_file=$root/examples/marketplace/config/modes.yaml
policy_file=$root/examples/marketplace/config/policy.yaml
base=${REPLMESH_CLUSTER_PORT_BASE:-27600}
ready_timeout=${REPLMESH_CLUSTER_TIMEOUT:-60}
stop_timeout=${REPLMESH_CLUSTER_STOP_TIMEOUT:-10}
host=127.0.0.1
marker=cluster.env
[[ $base =~ ^[0-9]+$ ]] && ((base >= 1024 && base + 43 <= 65535)) ||
	die "REPLMESH_CLUSTER_PORT_BASE=$base: want a port from 1024 to 65492 (the cluster uses BASE to BASE+43)"
[[ $ready_timeout =~ ^[0-9]+$ ]] || die "REPLMESH_CLUSTER_TIMEOUT=$ready_timeout: want whole seconds"
[[ $stop_timeout =~ ^[0-9]+$ ]] || die "REPLMESH_CLUSTER_STOP_TIMEOUT=$stop_timeout: want whole seconds"

# usage [CODE]: prints the comment above and exits with CODE (default 2).
usage() {
	sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
	exit "${1:-2}"
}

# ---------------------------------------------------------------------------
# The processes. Order matters: brokers first, then each owner's primary
# before its standby; `down` stops them in reverse.

names=(broker-1 broker-2 broker-3 stores-1 stores-2 products-1 products-2)

broker_grpc() { echo "$host:$((base + 10 * ($1 - 1)))"; }
broker_gossip() { echo "$host:$((base + 10 * ($1 - 1) + 1))"; }
broker_http() { echo "$host:$((base + 10 * ($1 - 1) + 2))"; }
all_brokers="$(broker_grpc 1),$(broker_grpc 2),$(broker_grpc 3)"

# svc_ports NAME: sets http and listen for a stores or products instance.
svc_ports() {
	case $1 in
	stores-1) http=$host:$((base + 30)) listen=$host:$((base + 31)) ;;
	stores-2) http=$host:$((base + 32)) listen=$host:$((base + 33)) ;;
	products-1) http=$host:$((base + 40)) listen=$host:$((base + 41)) ;;
	products-2) http=$host:$((base + 42)) listen=$host:$((base + 43)) ;;
	*) return 1 ;;
	esac
}

# secure: true when the cluster in DIR runs with mTLS (up made its CA).
secure() { [[ -f $dir/tls/ca.pem ]]; }

# tls_flags CERT: sets tls to the -tls-* flags of certificate CERT
# (DIR/tls/CERT.pem), nothing in plaintext.
tls_flags() {
	tls=()
	secure || return 0
	tls=(-tls-ca "$dir/tls/ca.pem" -tls-cert "$dir/tls/$1.pem" -tls-key "$dir/tls/$1-key.pem" -policy "$policy_file")
}

# make_certs: the dev CA, one certificate per process and the admin's,
# and a gossip key, in DIR/tls (those present are kept).
make_certs() {
	local t=$dir/tls name n
	mkdir -p "$t"
	chmod 700 "$t"
	if [[ ! -f $t/ca.pem ]]; then
		rm -f "$t"/*.pem # certificates of another CA
		"$bin/replctl" tls ca create -dir "$t" >/dev/null
	fi
	for name in "${names[@]}" admin-replctl; do
		case $name in
		broker-*) [[ -f $t/$name.pem ]] || "$bin/replctl" tls cert create -ca-dir "$t" -dir "$t" -broker "$name" -name "$name" >/dev/null ;;
		admin-*) [[ -f $t/$name.pem ]] || "$bin/replctl" tls cert create -ca-dir "$t" -dir "$t" -admin "${name#admin-}" >/dev/null ;;
		*)
			n=${name%-*}
			[[ -f $t/$name.pem ]] || "$bin/replctl" tls cert create -ca-dir "$t" -dir "$t" -service "$n" -instance "$name" -name "$name" >/dev/null
			;;
		esac
	done
	if [[ ! -f $t/gossip.key ]]; then
		(umask 077 && head -c 32 /dev/urandom | base64 >"$t/gossip.key")
	fi
	echo "  mTLS on: CA, certificates and gossip key in $t (REPLMESH_INSECURE=1 for plaintext)"
}

# command_of NAME: sets cmd to the command line of process NAME.
command_of() {
	local name=$1 n tls
	case $name in
	broker-*)
		n=${name#broker-}
		cmd=("$bin/replbroker" -name "$name" -grpc "$(broker_grpc "$n")" -gossip "$(broker_gossip "$n")"
			-http "$(broker_http "$n")" -gossip-profile local -lease 2s -heartbeat 500ms -modes "$modes_file")
		tls_flags "$name"
		if secure; then
			cmd+=("${tls[@]}" -gossip-key-file "$dir/tls/gossip.key")
		fi
		# Raft: broker-1 starts the cluster (no -join: a one-broker
		# cluster at first), the others ask to join it (any broker of the
		# list will do once the cluster runs). Each keeps its raft log in
		# its data dir, so a broker started again comes back as the member
		# it was (never a second cluster of its own).
		cmd+=(-data-dir "$dir/data/$name")
		if ((n != 1)); then
			local j join=()
			for j in 1 2 3; do
				((j == n)) || join+=("$(broker_gossip "$j")")
			done
			cmd+=(-join "$(IFS=,; echo "${join[*]}")")
		fi
		;;
	stores-*)
		svc_ports "$name"
		cmd=("$bin/stores" -instance "$name" -http "$http" -listen "$listen" -data "$dir/data/$name"
			-brokers "$all_brokers" -modes "$modes_file" -min-sync-standbys 1)
		tls_flags "$name"
		cmd+=(${tls[@]+"${tls[@]}"})
		;;
	products-*)
		svc_ports "$name"
		cmd=("$bin/products" -instance "$name" -http "$http" -listen "$listen" -data "$dir/data/$name"
			-brokers "$all_brokers" -modes "$modes_file")
		tls_flags "$name"
		cmd+=(${tls[@]+"${tls[@]}"})
		;;
	*) return 1 ;;
	esac
}

# all_ports: every port of the cluster, "PORT WHAT" per line.
all_ports() {
	local n name
	for n in 1 2 3; do
		echo "$((base + 10 * (n - 1))) broker-$n gRPC"
		echo "$((base + 10 * (n - 1) + 1)) broker-$n gossip"
		echo "$((base + 10 * (n - 1) + 2)) broker-$n HTTP"
	done
	for name in stores-1 stores-2 products-1 products-2; do
		svc_ports "$name"
		echo "${http##*:} $name HTTP"
		echo "${listen##*:} $name replication"
	done
}

# port_busy PORT: true when something listens on TCP PORT or holds UDP
# PORT, on any address (a listener on 0.0.0.0 blocks 127.0.0.1 too).
port_busy() {
	local port=$1 hex f files=()
	if [[ -r /proc/net/tcp ]]; then
		hex=$(printf '%04X' "$port")
		for f in /proc/net/tcp /proc/net/tcp6 /proc/net/udp /proc/net/udp6; do
			[[ -r $f ]] && files+=("$f") # no tcp6/udp6 without IPv6
		done
		# TCP: a socket in LISTEN state (0A); UDP: any bound socket.
		awk -v p=":$hex" 'FNR > 1 && substr($2, length($2) - 4) == p && (FILENAME ~ /udp/ || $4 == "0A") { found = 1 } END { exit !found }' \
			"${files[@]}" && return 0
		return 1
	fi
	# Elsewhere: can we connect to it?
	(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

check_ports() {
	local port what busy=()
	while read -r port what; do
		if port_busy "$port"; then
			busy+=("  $host:$port ($what)")
		fi
	done < <(all_ports)
	((${#busy[@]} == 0)) && return 0
	{
		echo "$prog: these ports are in use, so the cluster cannot start:"
		printf '%s\n' "${busy[@]}"
		echo "Another cluster (cluster.sh status DIR tells), a make marketplace run or another program holds them"
		echo "(ss -ltnup shows which). Stop it, or pick other ports: REPLMESH_CLUSTER_PORT_BASE=N (uses N to N+43)."
	} >&2
	exit 1
}

# ---------------------------------------------------------------------------
# Processes recorded in DIR.

# cmdline_matches PID NAME: true when PID runs exactly the command recorded
# for NAME (so a pid reused by another program is never signalled).
cmdline_matches() {
	local pid=$1 name=$2 want=$dir/run/$2.cmd got
	[[ -r $want ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	if [[ -r /proc/$pid/cmdline ]]; then
		# Compared as text (no argument holds a newline); cmp -s would
		# trust the size of the /proc file, which is 0.
		got=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
		# (A bare "return" would not do: in the EXIT trap it returns the
		# status the script exited with.)
		[[ -n $got && $got == "$(tr '\0' '\n' <"$want")" ]] && return 0
		return 1
	fi
	got=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
	[[ $got == "$(tr '\0' ' ' <"$want" | sed 's/ $//')" ]]
}

# recorded: "NAME PID" lines of DIR/pids.
recorded() {
	[[ -f $dir/pids ]] && grep -E '^[a-z0-9-]+ [0-9]+$' "$dir/pids" || true
}

# alive_pids: "NAME PID" of every recorded process still running.
alive_pids() {
	local name pid
	while read -r name pid; do
		cmdline_matches "$pid" "$name" && echo "$name $pid"
	done < <(recorded)
	return 0
}

# start NAME: starts process NAME in the background (stdin /dev/null,
# output to its log), records its command line and pid.
start() {
	local name=$1 pid
	command_of "$name"
	mkdir -p "$dir/logs" "$dir/run" "$dir/data"
	printf '%s\0' "${cmd[@]}" >"$dir/run/$name.cmd"
	{
		echo "== $(date '+%Y-%m-%d %H:%M:%S') start: ${cmd[*]}"
	} >>"$dir/logs/$name.log"
	nohup "${cmd[@]}" </dev/null >>"$dir/logs/$name.log" 2>&1 &
	pid=$!
	# A restart replaces the line of NAME in place; a new NAME is appended.
	recorded | awk -v n="$name" -v p="$pid" '$1 == n { $2 = p; done = 1 } { print } END { if (!done) print n, p }' >"$dir/pids.new"
	mv "$dir/pids.new" "$dir/pids"
	started+=("$name")
	# Until the child has exec'd the binary, its command line is nohup's or
	# this shell's: wait for it, so that later checks see the right one.
	local n
	for ((n = 0; n < 100; n++)); do
		cmdline_matches "$pid" "$name" && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	fail "$name (pid $pid) did not start (see $dir/logs/$name.log)"
}

# stop NAME PID: SIGTERM, wait up to stop_timeout, SIGKILL; only while PID
# still runs the recorded command of NAME.
stop() {
	local name=$1 pid=$2 n
	if ! cmdline_matches "$pid" "$name"; then
		if kill -0 "$pid" 2>/dev/null; then
			echo "  $name (pid $pid) is not running; pid $pid is now another process: left alone"
		else
			echo "  $name (pid $pid) is not running"
		fi
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	for ((n = 0; n < stop_timeout * 10; n++)); do
		cmdline_matches "$pid" "$name" || break
		sleep 0.1
	done
	if cmdline_matches "$pid" "$name"; then
		echo "  $name (pid $pid) did not stop within ${stop_timeout}s: SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((n = 0; n < 50; n++)); do
			cmdline_matches "$pid" "$name" || break
			sleep 0.1
		done
	else
		echo "  stopped $name (pid $pid)"
	fi
}

# stop_recorded: stops every recorded process, newest first.
stop_recorded() {
	local lines=() line i name pid
	while read -r line; do lines+=("$line"); done < <(recorded)
	for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
		read -r name pid <<<"${lines[i]}"
		stop "$name" "$pid"
	done
}

# ---------------------------------------------------------------------------
# Readiness, from `replctl -o json status`.

# rctl ARGS: bin/replctl with the admin certificate when secure.
rctl() {
	if secure; then
		REPLMESH_TLS_CA=$dir/tls/ca.pem REPLMESH_TLS_CERT=$dir/tls/admin-replctl.pem REPLMESH_TLS_KEY=$dir/tls/admin-replctl-key.pem \
			"$bin/replctl" "$@"
	else
		env -u REPLMESH_TLS_CA -u REPLMESH_TLS_CERT -u REPLMESH_TLS_KEY "$bin/replctl" "$@"
	fi
}

replctl() { rctl -broker "$all_brokers" -timeout 2s "$@"; }

# flatten: turns the indented JSON of replctl -o json into "path=value"
# lines (owners.0.primary.instance=stores-1); strings lose their quotes.
flatten() {
	awk '
	function path(   i, p) { p = ""; for (i = 2; i <= d; i++) p = p k[i] "."; return p }
	{
		line = $0
		sub(/^[ \t]+/, "", line); sub(/,$/, "", line)
		key = ""
		if (match(line, /^"[^"]*": /)) { key = substr(line, 2, RLENGTH - 4); line = substr(line, RLENGTH + 1) }
		else if (d > 0 && arr[d]) { key = idx[d]++ }
		if (line == "{" || line == "[") { d++; k[d] = key; arr[d] = (line == "["); idx[d] = 0; next }
		if (line == "}" || line == "]") { d--; next }
		if (line ~ /^".*"$/) line = substr(line, 2, length(line) - 2)
		print path() key "=" line
	}'
}

# status_flat: the flattened status (empty when no broker answers).
status_flat() {
	replctl -o json status 2>/dev/null | flatten || true
}

# readiness FLAT: prints what is still missing (nothing when ready).
readiness() {
	awk -v want_standby="$1" '
	{ split($0, kv, "="); p = kv[1]; v = substr($0, length(p) + 2) }
	p ~ /^brokers\.[0-9]+\.state$/ && v == "alive" { brokers++ }
	p ~ /^owners\.[0-9]+\.service$/ { split(p, a, "."); osvc[a[2]] = v }
	p ~ /^owners\.[0-9]+\.primary\.instance$/ { split(p, a, "."); oprim[a[2]] = v }
	p ~ /^owners\.[0-9]+\.standbys\.[0-9]+\.instance$/ { split(p, a, "."); ostandbys[a[2]] = ostandbys[a[2]] " " v }
	p ~ /^instances\.[0-9]+\.(service|instance)$/ { split(p, a, "."); inst[a[2], a[3]] = v }
	p ~ /^instances\.[0-9]+\.subscriptions\.[0-9]+\.(service|table|state)$/ { split(p, a, "."); sub_[a[2], a[4], a[5]] = v; subs[a[2], a[4]] = 1 }
	END {
		if (brokers < 3) missing = missing sprintf("  %d of 3 brokers alive\n", brokers)
		for (o in osvc) { prim[osvc[o]] = oprim[o]; sb[osvc[o]] = ostandbys[o] }
		if (prim["stores"] == "") missing = missing "  stores has no primary\n"
		if (want_standby && sb["stores"] == "") missing = missing "  stores has no standby\n"
		for (key in subs) {
			split(key, b, SUBSEP)
			i = b[1]
			if (inst[i, "service"] != "products" || sub_[i, b[2], "service"] != "stores") continue
			n = inst[i, "instance"] " " sub_[i, b[2], "table"]
			state[n] = sub_[i, b[2], "state"]
		}
		split("products-1 products-2", ps, " ")
		split("stores store_managers", ts, " ")
		for (x = 1; x <= 2; x++) for (y = 1; y <= 2; y++) {
			n = ps[x] " " ts[y]
			if (!(n in state)) missing = missing sprintf("  %s: no subscription to stores/%s yet\n", ps[x], ts[y])
			else if (state[n] != "streaming") missing = missing sprintf("  %s: stores/%s is %s, not streaming\n", ps[x], ts[y], state[n] == "" ? "starting" : state[n])
		}
		printf "%s", missing
	}'
}

# wait_until WHAT CHECK...: polls CHECK (a command that prints what is
# missing, nothing once done) until it prints nothing; fails at the
# deadline or when a started process has exited.
wait_until() {
	local what=$1 left name pid
	shift
	while :; do
		while read -r name pid; do
			cmdline_matches "$pid" "$name" || fail "$name (pid $pid) exited while waiting for: $what"
		done < <(recorded)
		left=$("$@")
		[[ -z $left ]] && return 0
		((SECONDS < deadline)) || fail "timed out after ${ready_timeout}s waiting for: $what; still missing:"$'\n'"$left"
		sleep 0.2
	done
}

broker_answers() {
	rctl -broker "$(broker_grpc "$1")" -timeout 1s -o json status >/dev/null 2>&1 || echo "  broker-$1 does not answer"
}

brokers_joined() {
	local n
	n=$(status_flat | grep -c '^brokers\.[0-9]*\.state=alive$' || true)
	((n >= $1)) || echo "  $n of $1 brokers alive"
}

# owner_role SERVICE INSTANCE ROLE: missing unless INSTANCE has ROLE.
owner_role() {
	status_flat | awk -v s="$1" -v i="$2" -v r="$3" '
		{ split($0, kv, "="); p = kv[1]; v = substr($0, length(p) + 2) }
		p ~ /^instances\.[0-9]+\.(service|instance|role)$/ { split(p, a, "."); f[a[2], a[3]] = v; n[a[2]] = 1 }
		END { for (x in n) if (f[x, "service"] == s && f[x, "instance"] == i && f[x, "role"] == r) exit 0; printf "  %s is not %s yet\n", i, r }'
}

cluster_ready() { status_flat | readiness 1; }

# ---------------------------------------------------------------------------
# Commands.

failed_up=0
started=()

fail() {
	echo "$prog: FAILED: $*" >&2
	exit 1
}

# on_exit (up only): a failed or interrupted up stops what it started and
# shows the end of every log.
on_exit() {
	local code=$?
	trap - EXIT INT TERM PIPE
	if ((code != 0)) && ((${#started[@]} > 0)); then
		echo >&2
		echo "== the cluster did not come up; last lines of each log:" >&2
		local name
		for name in "${names[@]}"; do
			[[ -f $dir/logs/$name.log ]] || continue
			echo "-- $dir/logs/$name.log" >&2
			tail -n 15 "$dir/logs/$name.log" >&2
		done
		echo "== stopping what was started" >&2
		stop_recorded >&2
		rm -f "$dir/pids"
		echo "data and logs kept in $dir" >&2
	fi
	exit "$code"
}

check_binaries() {
	local b
	for b in replbroker replctl stores products; do
		if [[ ! -x $bin/$b ]]; then
			echo "$prog: $bin/$b not found: run make build first, or" >&2
			echo "  go build -o bin/ ./cmd/replbroker ./cmd/replctl ./examples/marketplace/cmd/stores ./examples/marketplace/cmd/products" >&2
			exit 2
		fi
	done
}

cmd_up() {
	check_binaries
	if [[ -e $dir && ! -d $dir ]]; then
		die "$dir exists and is not a directory"
	fi
	if [[ -d $dir ]] && [[ -n $(ls -A "$dir") ]] && [[ ! -f $dir/$marker ]]; then
		die "$dir exists, is not empty and holds no cluster ($marker): name another directory"
	fi
	if [[ -d $dir ]]; then
		dir=$(cd "$dir" && pwd -P)
	fi
	local running
	running=$(alive_pids)
	if [[ -n $running ]]; then
		{
			echo "$prog: a cluster is already running in $dir:"
			sed 's/^/  /' <<<"$running"
			echo "stop it first: $0 down $dir"
		} >&2
		exit 1
	fi
	if [[ -f $dir/pids ]]; then
		echo "(no process of the previous run in $dir is alive: starting over, with its data)"
		rm -f "$dir/pids"
	fi
	check_ports
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd -P)
	if [[ ${REPLMESH_INSECURE:-} == 1 ]]; then
		rm -rf "$dir/tls"
	else
		make_certs
	fi
	write_env
	trap on_exit EXIT
	trap 'exit 130' INT TERM
	trap 'exit 141' PIPE # stdout closed (cluster.sh up | head): stop too
	deadline=$((SECONDS + ready_timeout))

	echo "== starting a replmesh cluster; data and logs in $dir"
	start broker-1
	wait_until "broker-1 answers" broker_answers 1
	start broker-2
	start broker-3
	wait_until "3 brokers joined" brokers_joined 3
	echo "  3 brokers joined"
	start stores-1
	wait_until "stores-1 primary" owner_role stores stores-1 primary
	echo "  stores-1 is the stores primary"
	start stores-2
	wait_until "stores-2 standby" owner_role stores stores-2 standby
	echo "  stores-2 is its standby"
	start products-1
	wait_until "products-1 primary of products" owner_role products products-1 primary
	start products-2
	wait_until "the cluster ready" cluster_ready
	echo "  products-1 and products-2 stream stores/stores and stores/store_managers"
	trap - EXIT INT TERM PIPE
	echo
	print_summary
}

write_env() {
	local n name
	{
		echo "# replmesh cluster in $dir (written by cluster.sh up)"
		echo "REPLMESH_BROKER=$all_brokers"
		for n in 1 2 3; do
			echo "BROKER_${n}_GRPC=$(broker_grpc "$n")"
			echo "BROKER_${n}_HTTP=http://$(broker_http "$n")"
		done
		for name in stores-1 stores-2 products-1 products-2; do
			svc_ports "$name"
			echo "$(tr 'a-z-' 'A-Z_' <<<"$name")=http://$http"
		done
		if secure; then
			echo "# replctl as the cluster's admin (mTLS)"
			echo "REPLMESH_TLS_CA=$dir/tls/ca.pem"
			echo "REPLMESH_TLS_CERT=$dir/tls/admin-replctl.pem"
			echo "REPLMESH_TLS_KEY=$dir/tls/admin-replctl-key.pem"
			echo "export REPLMESH_BROKER REPLMESH_TLS_CA REPLMESH_TLS_CERT REPLMESH_TLS_KEY"
		else
			echo "# plaintext (REPLMESH_INSECURE=1): replctl without certificates"
			echo "unset REPLMESH_TLS_CA REPLMESH_TLS_CERT REPLMESH_TLS_KEY"
			echo "export REPLMESH_BROKER"
		fi
	} >"$dir/$marker"
}

# role_of SERVICE INSTANCE (from flat status on stdin-less call).
print_summary() {
	local flat name pid n role epoch where
	flat=$(status_flat)
	printf '%-11s %-7s %-9s %s\n' PROCESS PID ROLE ADDRESSES
	while read -r name pid; do
		case $name in
		broker-*)
			n=${name#broker-}
			role=broker
			where="gRPC $(broker_grpc "$n"), gossip $(broker_gossip "$n"), status http://$(broker_http "$n")/"
			;;
		*)
			svc_ports "$name"
			role=$(awk -v i="$name" -F= '
				$1 ~ /^instances\.[0-9]+\.instance$/ && $2 == i { split($1, a, "."); want = a[2] }
				$1 ~ /^instances\.[0-9]+\.role$/ { split($1, a, "."); r[a[2]] = $2 }
				END { print (want != "" ? r[want] : "?") }' <<<"$flat")
			where="HTTP http://$http, replication $listen"
			;;
		esac
		printf '%-11s %-7s %-9s %s\n' "$name" "$pid" "$role" "$where"
	done < <(recorded)
	epoch=$(awk -F= '$1 ~ /^owners\.[0-9]+\.service$/ && $2 == "stores" { split($1, a, "."); o = a[2] }
		$1 ~ /^owners\.[0-9]+\.epoch$/ { split($1, a, "."); e[a[2]] = $2 } END { print e[o] }' <<<"$flat")
	local rel=$0 via_make="make cluster-down"
	[[ $rel == "$root"/* ]] && rel=./${rel#"$root"/}
	[[ $dir == "$(cd "$default_dir" 2>/dev/null && pwd -P)" ]] || via_make+=" CLUSTER_DIR=$dir"
	local security="mTLS on (certificates in $dir/tls; replctl uses the admin's, see $marker)"
	secure || security="plaintext (REPLMESH_INSECURE=1)"
	cat <<EOF

stores epoch $epoch. $security.
Logs: $dir/logs/NAME.log; pids: $dir/pids.
The cluster keeps running. Next (docs/quickstart.md walks through it):

  . $dir/$marker    # REPLMESH_BROKER and replctl's certificate
  bin/replctl status
  bin/replctl consumers
  bin/replctl tail stores/store_managers
  curl -s -X POST http://$host:$((base + 30))/stores -d '{"id": "S1", "name": "Lamps & Co"}'
  curl -s -X POST http://$host:$((base + 30))/stores/S1/managers -d '{"user": "alice"}'
  curl -s 'http://$host:$((base + 42))/authorize?store=S1&user=alice'
  bin/replctl verify stores/store_managers

Stop it: $rel down $dir   (or $via_make; down -purge also removes the data)
EOF
}

cmd_down() {
	if [[ ! -d $dir ]]; then
		echo "no cluster directory $dir: nothing to stop"
		return 0
	fi
	dir=$(cd "$dir" && pwd -P)
	if [[ -z $(ls -A "$dir") ]]; then
		# An up that found its ports taken leaves an empty DIR (e.g. mktemp -d).
		echo "no cluster in $dir (empty): nothing to stop"
		if ((purge)); then
			rmdir "$dir"
			echo "removed $dir"
		fi
		return 0
	fi
	if [[ ! -f $dir/$marker ]]; then
		die "$dir holds no cluster ($marker missing): not touching it"
	fi
	if [[ -f $dir/pids ]]; then
		echo "== stopping the cluster in $dir"
		stop_recorded
		rm -f "$dir/pids"
	else
		echo "no pids recorded in $dir: nothing to stop"
	fi
	if ((purge)); then
		local left
		left=$(alive_pids)
		[[ -z $left ]] || die "not purging $dir: still running: $left"
		rm -rf "$dir"
		echo "removed $dir"
	else
		echo "data and logs kept in $dir (down -purge removes them)"
	fi
}

cmd_status() {
	[[ -d $dir && -f $dir/$marker ]] || { echo "no cluster in $dir"; exit 2; }
	dir=$(cd "$dir" && pwd -P)
	if [[ ! -f $dir/pids ]]; then
		echo "no processes recorded in $dir (cluster is down)"
		exit 1
	fi
	local name pid bad=0
	echo "cluster in $dir"
	while read -r name pid; do
		if cmdline_matches "$pid" "$name"; then
			printf '  %-11s pid %-7s running\n' "$name" "$pid"
		else
			printf '  %-11s pid %-7s NOT running (see %s)\n' "$name" "$pid" "$dir/logs/$name.log"
			bad=1
		fi
	done < <(recorded)
	return $bad
}

cmd_start() {
	local name=$1 pid
	[[ -d $dir && -f $dir/$marker ]] || die "no cluster in $dir"
	dir=$(cd "$dir" && pwd -P)
	[[ -f $dir/run/$name.cmd ]] || die "no process $name recorded in $dir (names: ${names[*]})"
	pid=$(recorded | awk -v n="$name" '$1 == n { print $2 }')
	if [[ -n $pid ]] && cmdline_matches "$pid" "$name"; then
		die "$name is running already (pid $pid)"
	fi
	check_binaries
	# Same command line as before: the recorded one.
	command_of "$name"
	local want
	want=$(tr '\0' ' ' <"$dir/run/$name.cmd")
	if [[ "$want" != "${cmd[*]} " ]]; then
		die "$name was started with other settings (REPLMESH_CLUSTER_PORT_BASE or REPLMESH_BIN changed?): $want"
	fi
	start "$name"
	pid=$(recorded | awk -v n="$name" '$1 == n { print $2 }')
	echo "started $name (pid $pid); log: $dir/logs/$name.log"
}

# ---------------------------------------------------------------------------

(($# >= 1)) || usage
action=$1
shift
purge=0
args=()
for a in "$@"; do
	case $a in
	-purge | --purge) purge=1 ;;
	-h | --help) usage 0 ;;
	-*) die "unknown flag $a (run $prog -h)" ;;
	*) args+=("$a") ;;
	esac
done
((purge == 0)) || [[ $action == down ]] || die "-purge goes with down"

default_dir=${REPLMESH_CLUSTER_DIR:-${TMPDIR:-/tmp}/replmesh-cluster}
case $action in
up | down | status)
	((${#args[@]} <= 1)) || die "$action takes at most one DIR"
	dir=${args[0]:-$default_dir}
	"cmd_$action"
	;;
start)
	((${#args[@]} >= 1 && ${#args[@]} <= 2)) || die "start takes NAME [DIR]"
	dir=${args[1]:-$default_dir}
	cmd_start "${args[0]}"
	;;
-h | --help | help) usage 0 ;;
*) die "unknown command $action (up, down, status, start; -h for help)" ;;
esac
