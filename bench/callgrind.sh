#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that
# stays the same for the same binary however busy or slow the machine is,
# so two binaries compare even where the load tests' timings are noise.
#
#   bash bench/callgrind.sh                               # builds the gateway
#   MUME_BIN=/path/to/mume-gateway bash bench/callgrind.sh
#   BENCH_KEY_ARGS="" bash bench/callgrind.sh             # an unlimited key
#
# A mock upstream (nginx `return 200`, as in run.sh), the gateway under
# callgrind with a key that has credit and limits far above the load (as in
# run.sh), WARMUP requests, then REQUESTS paying requests on CONNECTIONS
# keep-alive connections (a Python client, standard library only). Only
# those REQUESTS are counted: instrumentation starts after start-up and the
# counters are zeroed after the warm-up. Prints the instructions per
# request; the profile is kept in $OUT (callgrind_annotate reads it).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
REQUESTS=${REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-600}
OUT=${OUT:-$BENCH_DIR/out/callgrind.out}

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
NGINX=$(command -v nginx || true)
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
[[ -n "$NGINX" ]] || die "nginx is needed (apt-get install nginx-light)"
if [[ -n "${MUME_BIN:-}" ]]; then
    GATEWAY_BIN=$MUME_BIN
else
    log "building the gateway (cargo build --release)"
    (cd "$REPO_DIR" && cargo build --release)
    GATEWAY_BIN=$REPO_DIR/target/release/mume-gateway
fi
[[ -x "$GATEWAY_BIN" ]] || die "$GATEWAY_BIN is not an executable"

WORK=$(mktemp -d /tmp/mume-callgrind.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

read -r UP_PORT GW_PORT < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')

wait_for_port() {
    local _
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 (see $WORK)"
}

REPLY='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":6,"total_tokens":14}}'
mkdir -p "$WORK/logs" "$WORK/tmp"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    server {
        listen 127.0.0.1:$UP_PORT;
        location = /v1/chat/completions {
            default_type application/json;
            return 200 '$REPLY';
        }
    }
}
EOF
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/logs/error.log" &
PIDS+=($!)
wait_for_port "$UP_PORT"

cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
shutdown_grace = "1s"

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/v1"

[[models]]
id = "up/bench"
prompt_price = "0.10"
completion_price = "0.20"
max_output_tokens = 1000

[store]
path = "$WORK/bench.db"
EOF
# shellcheck disable=SC2086
KEY=$("$GATEWAY_BIN" keys --config "$WORK/gateway.toml" create --name bench \
    ${BENCH_KEY_ARGS---credits 1000000 --rpm 4000000000 --tpm 4000000000 --max-concurrent 100000})

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT" "$OUT".*
valgrind --tool=callgrind --callgrind-out-file="$OUT" --instr-atstart=no \
    "$GATEWAY_BIN" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_for_port "$GW_PORT"

# N requests on C keep-alive connections; fails on any answer but 200.
load() {
    python3 - "$GW_PORT" "$KEY" "$1" "$CONNECTIONS" <<'EOF'
import http.client, sys, threading
port, key, n, conns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = b'{"model":"up/bench","messages":[{"role":"user","content":"hi"}]}'
headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
failed = []
def run(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        c.request("POST", "/api/v1/chat/completions", body, headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            failed.append(r.status)
threads = [threading.Thread(target=run, args=(n // conns,)) for _ in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
if failed:
    sys.exit(f"{len(failed)} answers were not 200: {sorted(set(failed))}")
EOF
}

log "warming up: $WARMUP requests (the first third not instrumented)"
load $((WARMUP / 3))
callgrind_control -i on "$GW_PID" >/dev/null 2>&1
load $((WARMUP - WARMUP / 3))
callgrind_control -z "$GW_PID" >/dev/null 2>&1
log "counting: $REQUESTS requests on $CONNECTIONS connections"
load "$REQUESTS"
callgrind_control -d "$GW_PID" >/dev/null 2>&1
callgrind_control -i off "$GW_PID" >/dev/null 2>&1
# The dump of the counted requests is the first numbered part.
TOTAL=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !found { gsub(",", "", $1); print $1; found = 1 }')
[[ -n "$TOTAL" ]] || die "no profile in $OUT.1"
echo "instructions per request: $((TOTAL / REQUESTS)) ($REQUESTS requests; profile: $OUT.1)"
