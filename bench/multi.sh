#!/usr/bin/env bash
# Several instances: what sharing the store and the limits costs, and
# whether limits still hold through a load balancer.
#
#   bash bench/multi.sh
#
# Targets, each behind the same mock upstream (nginx `return 200`, as in
# run.sh), with a metered key (credit, rpm, tpm and concurrency limits):
#
#   single   one gateway: embedded SQLite, in-process limiter
#   cluster  two gateways on one PostgreSQL database (a fresh one) and the
#            machine's Redis, behind nginx configured by deploy/nginx.conf
#            (the docker-compose load balancer, with local addresses)
#
# For each: throughput at CLUSTER_CONN connections and latency at a fixed
# CLUSTER_RATE, in rounds (median). Then a check through the load balancer:
# a 60 rpm key sends 100 requests and exactly 60 must pass.
# The table goes to stdout and to bench/MULTI.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/run.sh
source "$BENCH_DIR/run.sh"
COMMAND_LINE="${PG_SYNCHRONOUS_COMMIT:+PG_SYNCHRONOUS_COMMIT=$PG_SYNCHRONOUS_COMMIT }bash bench/multi.sh"

CLUSTER_CONN=${CLUSTER_CONN:-32}
CLUSTER_SECONDS=${CLUSTER_SECONDS:-10s}
CLUSTER_RATE=${CLUSTER_RATE:-300}
CLUSTER_ROUNDS=${CLUSTER_ROUNDS:-3}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://root@127.0.0.1:5432/test}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
MULTI_MD=${MULTI_MD:-$BENCH_DIR/MULTI.md}
# Postgres's synchronous_commit for the bench database: "on" (durable, the
# server default) or "off" (commits return before their WAL is flushed).
PG_SYNCHRONOUS_COMMIT=${PG_SYNCHRONOUS_COMMIT:-on}

multi_config() { # path port store-lines rate-limit-lines
    bench_config "$1" "$2"
    printf '\n[store]\n%s\n\n[rate_limit]\n%s\n' "$3" "$4" >>"$1"
}

start_gateway() { # name config port
    "$GATEWAY_BIN" serve --config "$2" >"$WORK/$1.log" 2>&1 &
    STARTED_PIDS+=("$!")
    wait_for_port "$3" "$1 gateway"
}

start_balancer() { # port backend-port backend-port
    local dir=$WORK/lb
    mkdir -p "$dir/logs" "$dir/tmp"
    {
        echo "daemon off; pid $dir/nginx.pid; error_log $dir/logs/error.log warn;"
        echo "worker_processes 1; worker_rlimit_nofile 20000;"
        sed -e "s/server gateway-1:8080/server 127.0.0.1:$2/" \
            -e "s/server gateway-2:8080/server 127.0.0.1:$3/" \
            -e "s/listen 8080;/listen 127.0.0.1:$1;/" \
            -e "s|^http {|http { access_log off; client_body_temp_path $dir/tmp/body; proxy_temp_path $dir/tmp/proxy; fastcgi_temp_path $dir/tmp/f; uwsgi_temp_path $dir/tmp/u; scgi_temp_path $dir/tmp/s;|" \
            "$REPO_DIR/deploy/nginx.conf"
    } >"$dir/nginx.conf"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    STARTED_PIDS+=("$!")
    wait_for_port "$1" "load balancer (nginx)"
}

load() { # key port out oha-args...
    local key=$1 port=$2 out=$3
    shift 3
    "$OHA" --no-tui --output-format json -m POST \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $key" \
        -d "$BODY" "$@" "http://127.0.0.1:$port$API_PATH" >"$out"
}

multi_main() {
    ensure_oha
    ensure_nginx
    ensure_gateway
    WORK=$(mktemp -d /tmp/mume-multi.XXXXXX)
    chmod 755 "$WORK"
    RAW=$WORK/raw
    mkdir -p "$RAW"
    trap cleanup EXIT
    trap 'exit 130' INT TERM

    local single_port a_port b_port lb_port
    read -r UP_PORT single_port a_port b_port lb_port <<<"$(free_ports 5)"
    start_mock_upstream

    local db="mume_bench_$(date +%s)"
    psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db" >&2
    psql "$PG_ADMIN_URL" -qc "ALTER DATABASE $db SET synchronous_commit = $PG_SYNCHRONOUS_COMMIT" >&2
    # Plain, as in the runs this one is compared with: the gateway would
    # otherwise take TLS from a server that offers it (sslmode=prefer).
    local pg_url="${PG_ADMIN_URL%/*}/$db?sslmode=disable"
    local prefix="mume:bench:$(date +%s):"

    multi_config "$WORK/single.toml" "$single_port" "path = \"$WORK/single.db\"" ""
    multi_config "$WORK/a.toml" "$a_port" "url = \"$pg_url\"" \
        "url = \"$REDIS_URL\"
instances = 2
key_prefix = \"$prefix\""
    sed "s/127.0.0.1:$a_port/127.0.0.1:$b_port/" "$WORK/a.toml" >"$WORK/b.toml"

    local limits=(--credits 1000000 --rpm 4000000000 --tpm 4000000000 --max-concurrent 100000)
    declare -gA KEY PORT
    KEY[single]=$("$GATEWAY_BIN" keys --config "$WORK/single.toml" create --name bench "${limits[@]}")
    KEY[cluster]=$("$GATEWAY_BIN" keys --config "$WORK/a.toml" create --name bench "${limits[@]}")
    local probe_key
    probe_key=$("$GATEWAY_BIN" keys --config "$WORK/a.toml" create --name probe --rpm 60)
    PORT[single]=$single_port
    PORT[cluster]=$lb_port
    start_gateway single "$WORK/single.toml" "$single_port"
    start_gateway a "$WORK/a.toml" "$a_port"
    start_gateway b "$WORK/b.toml" "$b_port"
    start_balancer "$lb_port" "$a_port" "$b_port"

    local t round
    for t in single cluster; do
        load "${KEY[$t]}" "${PORT[$t]}" "$RAW/warmup-$t.json" -n "$WARMUP_REQUESTS" -c "$CLUSTER_CONN"
    done
    for round in $(seq "$CLUSTER_ROUNDS"); do
        for t in single cluster; do
            log "$t: throughput, $CLUSTER_CONN connections, $CLUSTER_SECONDS (round $round/$CLUSTER_ROUNDS)"
            load "${KEY[$t]}" "${PORT[$t]}" "$RAW/tp-$t-$round.json" -z "$CLUSTER_SECONDS" -c "$CLUSTER_CONN"
            log "$t: latency at $CLUSTER_RATE req/s (round $round/$CLUSTER_ROUNDS)"
            load "${KEY[$t]}" "${PORT[$t]}" "$RAW/lat-$t-$round.json" -z "$CLUSTER_SECONDS" -c 16 -q "$CLUSTER_RATE"
        done
    done
    log "limits through the load balancer: a 60 rpm key sends 100 requests"
    load "$probe_key" "$lb_port" "$RAW/probe.json" -n 100 -c 10

    python3 - "$RAW" "$MULTI_MD" "$(git -C "$REPO_DIR" rev-parse --short HEAD)$(git -C "$REPO_DIR" diff --quiet HEAD || echo ' (with uncommitted changes)')" "$COMMAND_LINE" "$CLUSTER_CONN" "$CLUSTER_RATE" "$PG_SYNCHRONOUS_COMMIT" <<'PYEOF'
import glob, json, statistics, sys, time
raw, out, head, command, conn, rate, sync = sys.argv[1:]
def ok(d):
    # oha's -z cuts the requests still in flight at the deadline: not errors.
    codes = d.get("statusCodeDistribution", {})
    errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
    return sum(v for k, v in codes.items() if not k.startswith("2")) + sum(errors.values())
def med(xs):
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})"
def med_ms(xs):
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"
rows = ["| target | throughput, req/s | p50 at fixed rate, ms | p99 at fixed rate, ms |", "|---|---|---|---|"]
for t, what in (("single", "one gateway, SQLite + in-process limits"),
                ("cluster", f"two gateways behind nginx, Postgres (synchronous_commit {sync}) + Redis")):
    tp, p50, p99 = [], [], []
    for f in sorted(glob.glob(f"{raw}/tp-{t}-*.json")):
        d = json.load(open(f))
        if ok(d):
            sys.exit(f"{f}: non-2xx answers {d.get('statusCodeDistribution')} {d.get('errorDistribution')}")
        tp.append(d["summary"]["requestsPerSec"])
    for f in sorted(glob.glob(f"{raw}/lat-{t}-*.json")):
        d = json.load(open(f))
        if ok(d):
            sys.exit(f"{f}: non-2xx answers")
        p50.append(d["latencyPercentiles"]["p50"] * 1000)
        p99.append(d["latencyPercentiles"]["p99"] * 1000)
    rows.append(f"| {what} | {med(tp)} | {med_ms(p50)} | {med_ms(p99)} |")
probe = json.load(open(f"{raw}/probe.json")).get("statusCodeDistribution", {})
passed, limited = probe.get("200", 0), probe.get("429", 0)
verdict = "holds" if passed == 60 and limited == 40 else "DOES NOT hold"
text = "\n".join([
    f"Multi-instance benchmark, {time.strftime('%Y-%m-%d', time.gmtime())}, gateway {head}; "
    f"throughput at -c {conn}, latency at {rate} req/s with -c 16; median of rounds (min–max). "
    "Everything (client, balancer, gateways, Postgres, Redis, upstream) shares one 2-core machine.",
    "",
    *rows,
    "",
    f"A 60 rpm key through the load balancer, 100 requests: {passed} passed, {limited} got 429: the limit **{verdict}** across instances.",
    "",
    f"Command: `{command}`",
])
print(text)
open(out, "w").write(text + "\n")
PYEOF
    psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >&2 || true
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    multi_main "$@"
fi
