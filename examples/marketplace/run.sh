#!/usr/bin/env bash
# The marketplace as separate processes on localhost (make marketplace):
# builds replbroker, stores and products into ./bin, starts a broker, a
# stores primary and standby (min_sync_standbys 1) and two products
# instances, all from the same mode file (config/modes.yaml), waits until
# they are healthy, runs a short scenario with curl and stops everything.
#
# Needs Go and curl. Ports: MARKETPLACE_PORT_BASE (default 27400) and up:
#   broker gRPC +0, gossip +1, HTTP +2; stores-1 HTTP +10, stores-2 +11;
#   products-1 HTTP +20, products-2 +21 (replication ports are picked free).
# KEEP=1 keeps the data and logs directory.
#
# Security is on: a development CA and a certificate per process are made
# with `replctl tls` in the work directory, the broker serves mTLS with the
# access policy config/policy.yaml and an encrypted gossip, and stores and
# products run with their instance's certificate and the same policy.
# REPLMESH_INSECURE=1 runs everything in plaintext (loopback development).
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$(pwd)
bin="$root/bin"
modes="$root/examples/marketplace/config/modes.yaml"
policy="$root/examples/marketplace/config/policy.yaml"
base=${MARKETPLACE_PORT_BASE:-27400}

if ! command -v curl >/dev/null 2>&1; then
	echo "run.sh: curl is needed for the scenario (install it, e.g. apt-get install curl)" >&2
	exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/replmesh-marketplace.XXXXXX")
names=()
pids=()
failed=1

# stop sends SIGTERM to every process started, newest first, waits up to
# 10s for each, and SIGKILLs what is left.
stop_all() {
	local i pid name n code
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		pid=${pids[i]} name=${names[i]}
		kill -0 "$pid" 2>/dev/null || continue
		kill -TERM "$pid" 2>/dev/null || true
		for ((n = 0; n < 100; n++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "  $name (pid $pid) did not stop in 10s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
		code=0
		wait "$pid" 2>/dev/null || code=$?
		echo "  stopped $name (pid $pid, exit $code)"
	done
	pids=()
}

cleanup() {
	trap - EXIT INT TERM
	echo
	echo "== stopping"
	stop_all
	if [[ $failed == 1 ]]; then
		echo "== FAILED; last log lines of each process:"
		for f in "$work"/*.log; do
			[[ -e $f ]] || continue
			echo "-- $(basename "$f")"
			tail -n 15 "$f"
		done
	fi
	if [[ ${KEEP:-} == 1 ]]; then
		echo "data and logs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
	echo "FAILED: $*" >&2
	exit 1
}

# start NAME CMD...: runs CMD in the background, logging to $work/NAME.log.
start() {
	local name=$1
	shift
	"$@" >"$work/$name.log" 2>&1 &
	names+=("$name")
	pids+=("$!")
}

# http METHOD URL [BODY]: sets code and body.
http() {
	local out
	out=$(curl -s --max-time 10 -o "$work/body" -w '%{http_code}' -X "$1" -H 'Content-Type: application/json' \
		${3:+--data "$3"} "$2") || out=000
	code=$out
	body=$(cat "$work/body" 2>/dev/null || true)
}

# field NAME: the first string or number value of "NAME" in $body.
field() {
	printf '%s\n' "$body" | sed -n -e "s/^ *\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p" -e "s/^ *\"$1\": \([0-9.-]*\),\{0,1\}\$/\1/p" | head -n 1
}

# wait_for WHAT URL PATTERN: polls GET URL until the body matches PATTERN
# (grep -E) and holds no '"ready": false', failing at the deadline or when
# a process has exited.
wait_for() {
	local what=$1 url=$2 pattern=$3 i
	while ((SECONDS < deadline)); do
		for i in "${!pids[@]}"; do
			kill -0 "${pids[i]}" 2>/dev/null || fail "${names[i]} exited (see its log below)"
		done
		http GET "$url"
		if [[ $code == 200 ]] && grep -Eq "$pattern" <<<"$body" && ! grep -q '"ready": false' <<<"$body"; then
			echo "  $what"
			return 0
		fi
		sleep 0.1
	done
	fail "timed out waiting for: $what (last answer $code: $body)"
}

# expect WANT LABEL: checks the last answer's status code.
expect() {
	local want=$1 label=$2 detail
	detail=$(field error)
	[[ -z $detail ]] && detail=$(field reason)
	[[ -z $detail && -n $(field seq) ]] && detail="commit $(field table)@$(field seq)"
	printf '  %-58s -> %s %s\n' "$label" "$code" "$detail"
	[[ $code == "$want" ]] || fail "$label: got HTTP $code, want $want: $body"
}

echo "== build (go build -o bin/)"
mkdir -p "$bin"
go build -o "$bin/" ./cmd/replbroker ./cmd/replctl ./examples/marketplace/cmd/stores ./examples/marketplace/cmd/products
deadline=$((SECONDS + 45)) # bounds the run after the build (a first build may take minutes)

broker_grpc=127.0.0.1:$base
broker_http=127.0.0.1:$((base + 2))
s1=http://127.0.0.1:$((base + 10))
s2=http://127.0.0.1:$((base + 11))
p1=http://127.0.0.1:$((base + 20))
p2=http://127.0.0.1:$((base + 21))
common=(-brokers "$broker_grpc" -modes "$modes" -log-format json)

# tls NAME: sets tls to the -tls-* and -policy flags of process NAME
# (nothing in plaintext).
tls=()
tls_flags() {
	tls=()
	[[ ${REPLMESH_INSECURE:-} == 1 ]] && return 0
	tls=(-tls-ca "$work/tls/ca.pem" -tls-cert "$work/tls/$1.pem" -tls-key "$work/tls/$1-key.pem" -policy "$policy")
}

if [[ ${REPLMESH_INSECURE:-} == 1 ]]; then
	echo "== plaintext (REPLMESH_INSECURE=1)"
	broker_security=()
else
	echo "== mTLS: a dev CA and certificates (replctl tls) in $work/tls"
	"$bin/replctl" tls ca create -dir "$work/tls" >/dev/null
	"$bin/replctl" tls cert create -ca-dir "$work/tls" -dir "$work/tls" -broker broker-1 -name broker-1 >/dev/null
	for name in stores-1 stores-2 products-1 products-2; do
		"$bin/replctl" tls cert create -ca-dir "$work/tls" -dir "$work/tls" -service "${name%-*}" -instance "$name" -name "$name" >/dev/null
	done
	(umask 077 && head -c 32 /dev/urandom | base64 >"$work/tls/gossip.key")
	tls_flags broker-1
	broker_security=("${tls[@]}" -gossip-key-file "$work/tls/gossip.key")
fi

echo "== start (data and logs in $work)"
start broker "$bin/replbroker" -name broker-1 -grpc "$broker_grpc" -gossip "127.0.0.1:$((base + 1))" -http "$broker_http" \
	-gossip-profile local -lease 2s -heartbeat 500ms -modes "$modes" -log-format json ${broker_security[@]+"${broker_security[@]}"}
wait_for "broker-1    gRPC $broker_grpc, status http://$broker_http/" "http://$broker_http/api/status" '.'
tls_flags stores-1
start stores-1 "$bin/stores" -instance stores-1 -http "${s1#http://}" -data "$work/stores-1" -min-sync-standbys 1 "${common[@]}" ${tls[@]+"${tls[@]}"}
wait_for "stores-1    $s1: primary" "$s1/status" '"role": "primary"'
tls_flags stores-2
start stores-2 "$bin/stores" -instance stores-2 -http "${s2#http://}" -data "$work/stores-2" -min-sync-standbys 1 "${common[@]}" ${tls[@]+"${tls[@]}"}
wait_for "stores-2    $s2: standby" "$s2/status" '"role": "standby"'
tls_flags products-1
start products-1 "$bin/products" -instance products-1 -http "${p1#http://}" -data "$work/products-1" "${common[@]}" ${tls[@]+"${tls[@]}"}
wait_for "products-1  $p1: primary of products, replicas ready" "$p1/status" '"role": "primary"'
tls_flags products-2
start products-2 "$bin/products" -instance products-2 -http "${p2#http://}" -data "$work/products-2" "${common[@]}" ${tls[@]+"${tls[@]}"}
wait_for "products-2  $p2: standby of products, replicas ready" "$p2/status" '"role": "standby"'

echo
echo "== scenario"
http POST "$s1/stores" '{"id": "S1", "name": "Lamps & Co"}'
expect 201 "stores-1:   create store S1"
http POST "$s1/stores/S1/managers" '{"user": "alice"}'
expect 201 "stores-1:   add manager alice to S1"
seq=$(field seq)
wait_alice="{\"table\": \"store_managers\", \"seq\": $seq}"

http POST "$p1/stores/S1/products" "{\"user\": \"alice\", \"name\": \"desk lamp\", \"wait_for\": $wait_alice}"
expect 201 "products-1: alice adds \"desk lamp\" to S1 (wait_for @$seq)"
http GET "$p2/authorize?store=S1&user=alice"
expect 200 "products-2: may alice add products to S1?"
http POST "$p1/stores/S1/products" '{"user": "bob", "name": "bicycle"}'
expect 403 "products-1: bob adds \"bicycle\" to S1"
http POST "$p2/stores/S1/products" '{"user": "bob", "name": "bicycle"}'
expect 403 "products-2: bob adds \"bicycle\" to S1"
http POST "$s2/stores/S1/managers" '{"user": "bob"}'
expect 503 "stores-2:   add manager bob (a standby)"

http DELETE "$s1/stores/S1/managers/alice"
expect 200 "stores-1:   revoke manager alice of S1"
seq=$(field seq)
wait_revoke="{\"table\": \"store_managers\", \"seq\": $seq}"
http POST "$p1/stores/S1/products" "{\"user\": \"alice\", \"name\": \"lava lamp\", \"wait_for\": $wait_revoke}"
expect 403 "products-1: alice adds \"lava lamp\" to S1 (wait_for @$seq)"
http POST "$p2/stores/S1/products" "{\"user\": \"alice\", \"name\": \"lava lamp\", \"wait_for\": $wait_revoke}"
expect 403 "products-2: alice adds \"lava lamp\" to S1 (wait_for @$seq)"

http GET "$p1/stores/S1/products"
echo "  products-1: S1 lists $(grep -c '"id"' <<<"$body") product(s)"
for p in "$p1" "$p2"; do
	http GET "$p/status"
	printf '%s\n' "$body" | awk -v who="${p#http://}" '
		/"instance"/ { gsub(/[",]/, "", $2); inst = $2 }
		/"table"/ { gsub(/[",]/, "", $2); t = $2 }
		/"state"/ { gsub(/[",]/, "", $2); st = $2 }
		/"seq"/ { gsub(/,/, "", $2); seq = $2 }
		/"lag_seqs"/ { gsub(/,/, "", $2); lag = $2 }
		/"staleness"/ { gsub(/[",]/, "", $2); stale = $2 }
		/"mode"/ { gsub(/[",]/, "", $2); mode = $2 }
		/"mode_configured"/ { gsub(/[",]/, "", $2); printf "  %s: replica stores/%-14s state=%s seq=%s lag=%s staleness=%s mode=%s (configured %s)\n", inst, t, st, seq, lag, stale, mode, $2 }'
done

failed=0
echo
echo "== all expectations met"
