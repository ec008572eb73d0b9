#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: a figure that
# stays the same for the same binary however busy or slow the machine is,
# so two binaries compare even where the load tests' timings are noise.
#
#   bash bench/callgrind.sh                               # builds the gateway
#   MUME_BIN=/path/to/mume-gateway bash bench/callgrind.sh
#   BENCH_KEY_ARGS="" bash bench/callgrind.sh             # an unlimited key
#   TURNS=60 bash bench/callgrind.sh                      # a long conversation
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
# The mock upstream, the gateway's config and the process bookkeeping are
# run.sh's.
# shellcheck source=bench/run.sh
source "$BENCH_DIR/run.sh"
REQUESTS=${REQUESTS:-2000}
# 0: the one-message body of run.sh; N: a system prompt and N question and
# answer turns (1: about 1.9 KB, 60: about 75 KB).
TURNS=${TURNS:-0}
CONNECTIONS=${CONNECTIONS:-4}
WARMUP=${WARMUP:-600}
OUT=${OUT:-$BENCH_DIR/out/callgrind.out}

command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
ensure_nginx
ensure_gateway
WORK=$(mktemp -d /tmp/mume-callgrind.XXXXXX)
chmod 755 "$WORK" # nginx workers run as an unprivileged user
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r UP_PORT GW_PORT <<<"$(free_ports 2)"
start_mock_upstream

bench_config "$WORK/gateway.toml" "$GW_PORT"
printf '\n[store]\npath = "%s"\n' "$WORK/bench.db" >>"$WORK/gateway.toml"
# shellcheck disable=SC2086
KEY=$("$GATEWAY_BIN" keys --config "$WORK/gateway.toml" create --name bench \
    ${BENCH_KEY_ARGS---credits 1000000 --rpm 4000000000 --tpm 4000000000 --max-concurrent 100000})

mkdir -p "$(dirname "$OUT")"
rm -f "$OUT" "$OUT".*
valgrind --tool=callgrind --callgrind-out-file="$OUT" --instr-atstart=no \
    "$GATEWAY_BIN" serve --config "$WORK/gateway.toml" >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
STARTED_PIDS+=("$GW_PID")
wait_for_port "$GW_PORT" "the gateway under callgrind"

# N requests on C keep-alive connections; fails on any answer but 200.
load() {
    python3 - "$GW_PORT" "$KEY" "$1" "$CONNECTIONS" "$TURNS" <<'EOF'
import http.client, json, sys, threading
port, key, n, conns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
turns = int(sys.argv[5])
body = b'{"model":"up/bench","messages":[{"role":"user","content":"hi"}]}'
if turns:
    messages = [{"role": "system", "content": "You are a helpful assistant. " * 20}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"Tell me about item {i}. " * 20})
        messages.append({"role": "assistant", "content": f"Item {i} is a thing with properties. " * 20})
    body = json.dumps({"model": "up/bench", "messages": messages, "temperature": 0.2}).encode()
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
