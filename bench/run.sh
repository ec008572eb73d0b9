#!/usr/bin/env bash
# Mume Gateway benchmark: direct-to-upstream vs nginx vs the gateway.
#
#   bash bench/run.sh                                   # builds the gateway
#   MUME_BIN=/path/to/mume-gateway bash bench/run.sh    # uses that binary
#
# Everything runs on this machine, on 127.0.0.1 only, and is stopped on exit.
# The results table goes to bench/RESULTS.md and stdout. See bench/README.md
# for what is measured and why.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
COMMAND_LINE="${MUME_BIN:+MUME_BIN=$MUME_BIN }bash bench/run.sh${*:+ $*}"

# --- Tunables (environment overrides; the defaults are the published setup) --
LAT_RATE=${LAT_RATE:-500}            # req/s for the fixed-rate latency test
LAT_CONN=${LAT_CONN:-16}             # keep-alive connections for it
LAT_DURATION=${LAT_DURATION:-20s}
LAT_ROUNDS=${LAT_ROUNDS:-3}          # rounds of each load test; the median counts
TP_CONN=${TP_CONN:-64}               # connections for the throughput test
TP_DURATION=${TP_DURATION:-15s}
TP_ROUNDS=${TP_ROUNDS:-3}
CPU_REQUESTS=${CPU_REQUESTS:-20000}  # fixed request count for CPU per request
CPU_CONN=${CPU_CONN:-16}
CPU_ROUNDS=${CPU_ROUNDS:-3}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-2000}
STREAMS=${STREAMS:-2000}             # concurrent open streams for RSS/stream
STREAM_SECONDS=${STREAM_SECONDS:-120} # how long the upstream keeps a stream going
RESULTS_MD=${RESULTS_MD:-$BENCH_DIR/RESULTS.md}

BODY='{"model":"up/bench","messages":[{"role":"user","content":"hi"}]}'
API_PATH=/api/v1/chat/completions

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# =============================================================================
# 1. Tools: install what is missing
# =============================================================================

ensure_oha() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v oha >/dev/null 2>&1; then
        log "installing oha (cargo install oha --locked)"
        cargo install oha --locked
    fi
    OHA=$(command -v oha)
}

ensure_nginx() {
    # Debian installs the binary in /usr/sbin, which a non-root PATH may lack.
    NGINX=$(command -v nginx || true)
    [[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
    if [[ -z "$NGINX" ]]; then
        log "installing nginx (apt-get)"
        apt-get update -qq
        apt-get install -y -qq nginx-light || apt-get install -y -qq nginx
        NGINX=/usr/sbin/nginx
    fi
    # The distribution's own nginx service (if any) is left alone: ours run
    # with their own prefix, pid file, logs and ports.
}

ensure_gateway() {
    if [[ -n "${MUME_BIN:-}" ]]; then
        [[ -x "$MUME_BIN" ]] || die "MUME_BIN=$MUME_BIN is not an executable"
        GATEWAY_BIN=$MUME_BIN
    else
        log "building the gateway (cargo build --release)"
        (cd "$REPO_DIR" && cargo build --release)
        GATEWAY_BIN=$REPO_DIR/target/release/mume-gateway
    fi
}

raise_fd_limit() {
    # 2,000 streams need ~4,000 descriptors in a proxy (client + upstream side).
    # Ask for 65536; a container may cap the hard limit lower, so fall back to it.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    local n; n=$(ulimit -n)
    [[ "$n" == unlimited || "$n" -ge $((STREAMS * 2 + 1000)) ]] ||
        die "open-file limit $n is too low for $STREAMS streams"
}

# =============================================================================
# 2. Processes: start, track, clean up
# =============================================================================

STARTED_PIDS=()

cleanup() {
    local rc=$?
    # Stop only what this script started, by PID, newest first.
    local i
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${STARTED_PIDS[i]}" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        # Give each a moment, then insist.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ -n "${WORK:-}" && -d "$WORK" ]]; then
        if [[ "${KEEP_WORK:-0}" == 1 || $rc -ne 0 ]]; then
            log "logs and raw results kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit $rc
}

# A work dir for this run (WORK, with RAW for raw results in it), removed by
# cleanup, which runs on exit.
open_work() { # name
    WORK=$(mktemp -d "/tmp/mume-$1.XXXXXX")
    chmod 755 "$WORK" # nginx workers run as an unprivileged user
    RAW=$WORK/raw
    mkdir -p "$RAW"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# Prints N free loopback ports. All sockets are held open until every port is
# chosen, so the same port is never handed out twice.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_for_port() { # port what
    local port=$1 what=$2 _
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "$what did not start listening on 127.0.0.1:$port (see $WORK)"
}

# nginx is a master plus worker processes: measure them all.
nginx_pids() { # master_pid -> "master,worker,worker"
    local master=$1
    local workers
    workers=$(ps -o pid= --ppid "$master" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')
    echo "$master${workers:+,$workers}"
}

# Sum of a /proc/PID/status field (kB) over comma-separated PIDs.
status_kib() { # field pids
    local field=$1 total=0 pid v
    for pid in ${2//,/ }; do
        v=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status")
        total=$((total + v))
    done
    echo "$total"
}

# Sum of utime+stime (clock ticks) over comma-separated PIDs. Fields 14 and 15
# of /proc/PID/stat; the command name (field 2) may contain spaces, so count
# from after its closing parenthesis (there, utime is field 12).
cpu_ticks() { # pids
    local total=0 pid t
    for pid in ${1//,/ }; do
        t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
        total=$((total + t))
    done
    echo "$total"
}

# --- The mock upstream: nginx answering a fixed chat.completion ---------------
# nginx `return` is about the cheapest HTTP answer there is, so "direct"
# measures the client + loopback floor and both proxies add to the same base.
start_mock_upstream() {
    local dir=$WORK/upstream
    mkdir -p "$dir/logs" "$dir/tmp"
    local reply='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":6,"total_tokens":14}}'
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; }
http {
    # Not one of the measured proxies: keep it as light as possible.
    access_log off;
    keepalive_requests 10000000;   # never make a client reconnect mid-test
    keepalive_timeout 300s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$UP_PORT;
        # The upstream's own path, and the proxies' path so that a "direct"
        # oha command line differs from the proxied ones only by its port.
        location = /v1/chat/completions {
            default_type application/json;
            return 200 '$reply';
        }
        location = $API_PATH {
            default_type application/json;
            return 200 '$reply';
        }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    UP_MASTER=$!
    STARTED_PIDS+=("$UP_MASTER")
    wait_for_port "$UP_PORT" "mock upstream (nginx)"
}

# --- The slow streaming upstream (Python) -----------------------------------
start_stream_upstream() {
    python3 "$BENCH_DIR/stream_upstream.py" --port "$STREAM_PORT" \
        --duration "$STREAM_SECONDS" --interval 1 >"$WORK/stream_upstream.log" 2>&1 &
    STREAM_PID=$!
    STARTED_PIDS+=("$STREAM_PID")
    wait_for_port "$STREAM_PORT" "stream upstream"
}

# --- nginx as a plain reverse proxy (the baseline) ----------------------------
start_nginx_proxy() {
    local dir=$WORK/nginx
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; }
http {
    # Like the gateway, nginx logs every request (the default combined format).
    access_log $dir/logs/access.log;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;

    # Reuse upstream connections, as the gateway's HTTP client pool does.
    upstream mock {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    upstream streamer {
        server 127.0.0.1:$STREAM_PORT;
        keepalive 64;
    }

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;          # stream through, as the gateway does
    proxy_read_timeout 600s;

    server {   # non-streaming: same path as the gateway
        listen 127.0.0.1:$NGINX_PORT;
        location = $API_PATH {
            proxy_pass http://mock/v1/chat/completions;
        }
    }
    server {   # streaming: same path, the slow Python upstream
        listen 127.0.0.1:$NGINX_STREAM_PORT;
        location = $API_PATH {
            proxy_pass http://streamer/v1/chat/completions;
        }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" &
    NGINX_MASTER=$!
    STARTED_PIDS+=("$NGINX_MASTER")
    wait_for_port "$NGINX_PORT" "nginx proxy"
    wait_for_port "$NGINX_STREAM_PORT" "nginx proxy (streams)"
}

# --- The gateway --------------------------------------------------------------
# The config of a gateway on PORT serving up/bench from the mock upstream;
# callers append the sections they need.
bench_config() { # path port
    cat >"$1" <<EOF
[server]
listen = "127.0.0.1:$2"
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
EOF
}

start_gateway() {
    local conf=$WORK/gateway.toml
    cat >"$conf" <<EOF
[server]
listen = "127.0.0.1:$GW_PORT"
# Keep-alive comments must not interfere with the stream test.
keepalive_interval = "1h"
max_stream_duration = "30m"
shutdown_grace = "1s"

[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:$UP_PORT/v1"

[[providers]]
name = "stream"
kind = "openai"
base_url = "http://127.0.0.1:$STREAM_PORT/v1"
first_byte_timeout = "60s"
idle_timeout = "60s"

[[models]]
id = "up/bench"
prompt_price = "0.10"
completion_price = "0.20"
max_output_tokens = 1000

[[models]]
id = "stream/bench"
prompt_price = "0.10"
completion_price = "0.20"
max_output_tokens = 1000

[store]
path = "$WORK/bench.db"
EOF
    "$GATEWAY_BIN" check-config --config "$conf" >/dev/null || die "gateway rejected $conf"
    # Every request goes through auth, the rate limiter and the credit hold
    # and settlement: a key with credit and limits far above the load
    # (BENCH_KEY_ARGS overrides them; empty quotes mean an unlimited key).
    # shellcheck disable=SC2086
    BENCH_KEY=$("$GATEWAY_BIN" keys --config "$conf" create --name bench \
        ${BENCH_KEY_ARGS---credits 1000000 --rpm 4000000000 --tpm 4000000000 --max-concurrent 100000})
    # One access line per request goes to stdout: into a file, like nginx's.
    "$GATEWAY_BIN" serve --config "$conf" --listen "127.0.0.1:$GW_PORT" \
        >"$WORK/gateway.log" 2>&1 &
    GW_PID=$!
    STARTED_PIDS+=("$GW_PID")
    wait_for_port "$GW_PORT" "gateway"
}

# Fail early, with the answer shown, if a target does not answer as expected.
check_target() { # name port
    local name=$1 port=$2 out
    out=$(curl -sS --max-time 5 -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $BENCH_KEY" \
        -d "$BODY" "http://127.0.0.1:$port$API_PATH") || die "$name: request failed"
    grep -q '"chat.completion"' <<<"$out" || die "$name answered: $out"
}

# =============================================================================
# 3. Measurements. Raw results go to $RAW; report.py makes the table.
# =============================================================================

TARGETS=(direct nginx gateway)
port_of() {
    case $1 in
        direct) echo "$UP_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        gateway) echo "$GW_PORT" ;;
    esac
}
# Whose CPU the "direct" column shows is the mock upstream's own.
pids_of() {
    case $1 in
        direct) nginx_pids "$UP_MASTER" ;;
        nginx) nginx_pids "$NGINX_MASTER" ;;
        gateway) echo "$GW_PID" ;;
    esac
}

metric() { echo "$1 $2" >>"$RAW/metrics.txt"; }  # key value

# oha with the common options; the target differs only by its port.
oha_run() { # target out.json oha-args...
    local target=$1 out=$2
    shift 2
    "$OHA" --no-tui --output-format json -m POST \
        -H 'Content-Type: application/json' -H "Authorization: Bearer $BENCH_KEY" \
        -d "$BODY" "$@" "http://127.0.0.1:$(port_of "$target")$API_PATH" >"$out"
}

warm_up() {
    local t
    for t in "${TARGETS[@]}"; do
        oha_run "$t" "$RAW/warmup-$t.json" -n "$WARMUP_REQUESTS" -c "$TP_CONN"
    done
}

# Every load test runs in rounds, the three targets taking turns in each
# round, and the report takes the median round: on a shared 2-core machine a
# single run can land on a bad scheduling pattern (the gateway's throughput
# has been seen to swing by a third from one 5 s run to the next).

# a. Latency at a fixed, moderate rate: what a caller feels when the proxy is
#    not saturated. -w waits for in-flight requests at the deadline instead of
#    counting them as errors. The same runs give the CPU per request at that
#    rate (utime+stime over the run; report.py divides by the requests oha
#    made): unsaturated, each request pays for its own wake-ups and cold
#    caches, which a full-load run spreads over many.
measure_latency() {
    local t round pids before
    for round in $(seq "$LAT_ROUNDS"); do
        for t in "${TARGETS[@]}"; do
            log "latency: $t, $LAT_RATE req/s, $LAT_CONN connections, $LAT_DURATION (round $round/$LAT_ROUNDS)"
            pids=$(pids_of "$t")
            before=$(cpu_ticks "$pids")
            oha_run "$t" "$RAW/latency-$t-$round.json" -c "$LAT_CONN" -q "$LAT_RATE" -z "$LAT_DURATION" -w
            metric "cpu_ticks_rate_$t" "$(($(cpu_ticks "$pids") - before))"
            sleep 1
        done
    done
}

# b. Throughput at 64 connections, no rate limit.
measure_throughput() {
    local t round
    for round in $(seq "$TP_ROUNDS"); do
        for t in "${TARGETS[@]}"; do
            log "throughput: $t, $TP_CONN connections, $TP_DURATION (round $round/$TP_ROUNDS)"
            oha_run "$t" "$RAW/throughput-$t-$round.json" -c "$TP_CONN" -z "$TP_DURATION" -w
            sleep 1
        done
    done
}

# c. CPU time per request: the process's own utime+stime over a fixed number of
#    requests. Nothing is subtracted (an idle proxy uses ~0 CPU anyway).
measure_cpu() {
    local t pids before after round
    metric clk_tck "$(getconf CLK_TCK)"
    metric cpu_requests "$CPU_REQUESTS"
    for round in $(seq "$CPU_ROUNDS"); do
        for t in "${TARGETS[@]}"; do
            log "cpu: $t, $CPU_REQUESTS requests, $CPU_CONN connections (round $round/$CPU_ROUNDS)"
            pids=$(pids_of "$t")
            before=$(cpu_ticks "$pids")
            oha_run "$t" "$RAW/cpu-$t-$round.json" -n "$CPU_REQUESTS" -c "$CPU_CONN"
            after=$(cpu_ticks "$pids")
            metric "cpu_ticks_$t" "$((after - before))"
            sleep 0.5
        done
    done
}

# d. Memory at rest: after startup and a few requests, before any load.
measure_rest_rss() {
    local i
    for i in $(seq 10); do
        check_target gateway "$GW_PORT"
        check_target nginx "$NGINX_PORT"
    done
    sleep 1
    metric rss_rest_kib_gateway "$(status_kib VmRSS "$GW_PID")"
    metric rss_rest_kib_nginx "$(status_kib VmRSS "$(nginx_pids "$NGINX_MASTER")")"
}

measure_peak_rss() {
    metric rss_peak_kib_gateway "$(status_kib VmHWM "$GW_PID")"
    metric rss_peak_kib_nginx "$(status_kib VmHWM "$(nginx_pids "$NGINX_MASTER")")"
}

# e. Memory per open stream: stream_clients.py opens the streams, waits for
#    every first event, samples RSS of the given PIDs and closes them.
measure_streams() { # target port pids
    local t=$1 port=$2 pids=$3
    log "streams: $t, $STREAMS concurrent streams"
    python3 "$BENCH_DIR/stream_clients.py" --port "$port" --count "$STREAMS" --key "$BENCH_KEY" \
        --pids "$pids" >"$RAW/streams-$t.json" 2>"$WORK/stream_clients-$t.log" ||
        log "warning: not every stream opened through $t (see $RAW/streams-$t.json)"
    cat "$RAW/streams-$t.json" >&2
    # Let the closed streams drain out of the upstream before the next test.
    sleep 3
}

# Other work on the machine (a compiler, another benchmark) skews every number
# here, so each phase records how much CPU went to processes that are not
# ours: the machine's user+system time (/proc/stat) minus what our servers and
# our reaped children (oha, the stream clients) used. Interrupt time is left
# out of both sides, steal is recorded on its own.
machine_ticks() { awk '/^cpu / { print $2+$3+$4, $2+$3+$4+$5+$6+$7+$8+$9, $9 }' /proc/stat; }
our_ticks() {
    local servers children
    servers=$(cpu_ticks "$(nginx_pids "$UP_MASTER"),$(nginx_pids "$NGINX_MASTER"),$GW_PID,$STREAM_PID")
    # cutime + cstime of this shell: every child it has waited for.
    children=$(sed 's/^.*) //' "/proc/$$/stat" | awk '{ print $14 + $15 }')
    echo $((servers + children))
}
phase_begin() {
    PHASE_MACHINE=$(machine_ticks)
    PHASE_OURS=$(our_ticks)
}
phase_end() { # name
    local b0 t0 s0 b1 t1 s1 ours
    read -r b0 t0 s0 <<<"$PHASE_MACHINE"
    read -r b1 t1 s1 <<<"$(machine_ticks)"
    ours=$(($(our_ticks) - PHASE_OURS))
    metric "other_cpu_pct_$1" "$(awk -v o=$((b1 - b0 - ours)) -v t=$((t1 - t0)) \
        'BEGIN { if (o < 0) o = 0; if (t == 0) t = 1; printf "%.1f", 100 * o / t }')"
    metric "steal_pct_$1" "$(awk -v s=$((s1 - s0)) -v t=$((t1 - t0)) \
        'BEGIN { if (t == 0) t = 1; printf "%.1f", 100 * s / t }')"
}

record_machine() {
    {
        echo "date $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "nproc $(nproc)"
        echo "cpu_model $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "memory $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "kernel $(uname -r)"
        echo "nginx_version $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
        echo "oha_version $("$OHA" --version | head -1)"
        echo "gateway_version $("$GATEWAY_BIN" --version | head -1)"
        echo "git_rev $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO_DIR" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
        echo "command $COMMAND_LINE"
        echo "settings latency ${LAT_RATE} req/s for ${LAT_DURATION} at -c ${LAT_CONN}, ${LAT_ROUNDS} rounds; throughput -c ${TP_CONN} for ${TP_DURATION}, ${TP_ROUNDS} rounds; cpu ${CPU_REQUESTS} requests at -c ${CPU_CONN}, ${CPU_ROUNDS} rounds; ${STREAMS} streams; each figure is the median round (min–max in brackets)"
    } >"$RAW/machine.txt"
    metric lat_rate "$LAT_RATE"
    metric tp_conn "$TP_CONN"
}

# =============================================================================
# main
# =============================================================================
main() {
    local t0=$SECONDS
    ensure_oha
    ensure_nginx
    ensure_gateway
    raise_fd_limit

    open_work bench

    read -r UP_PORT STREAM_PORT NGINX_PORT NGINX_STREAM_PORT GW_PORT <<<"$(free_ports 5)"
    log "ports: upstream $UP_PORT, stream upstream $STREAM_PORT, nginx $NGINX_PORT/$NGINX_STREAM_PORT, gateway $GW_PORT; work dir $WORK"

    start_mock_upstream
    start_stream_upstream
    start_nginx_proxy
    start_gateway
    check_target direct "$UP_PORT"
    check_target nginx "$NGINX_PORT"
    check_target gateway "$GW_PORT"
    record_machine

    measure_rest_rss
    warm_up
    phase_begin; measure_latency; phase_end latency
    phase_begin; measure_throughput; phase_end throughput
    phase_begin; measure_cpu; phase_end cpu
    phase_begin
    measure_streams nginx "$NGINX_STREAM_PORT" "$(nginx_pids "$NGINX_MASTER")"
    measure_streams gateway "$GW_PORT" "$GW_PID"
    phase_end streams
    measure_peak_rss

    metric elapsed_seconds "$((SECONDS - t0))"
    python3 "$BENCH_DIR/report.py" "$RAW" "$RESULTS_MD"
    log "done in $((SECONDS - t0)) s; table written to $RESULTS_MD"
}

# Run when executed; sourcing the file only defines the functions (handy for
# poking at one test by hand).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
