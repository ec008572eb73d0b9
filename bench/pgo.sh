#!/usr/bin/env bash
# A profile-guided build of the gateway (rustc's -Cprofile-generate and
# -Cprofile-use, merged by LLVM's llvm-profdata from rustup's llvm-tools).
#
#   bash bench/pgo.sh          # about 15 minutes on 2 cores
#   MUME_BIN=target/pgo/mume-gateway bash bench/run.sh
#
# 1. builds an instrumented gateway (its own target dir, for the host triple
#    given explicitly so that build scripts and proc macros stay plain);
# 2. runs it behind run.sh's setup (the nginx mock upstream, the slow
#    streaming upstream, oha) on a mixed load: paying requests at a fixed
#    rate and at full load, open streams, and requests that fail (a wrong
#    key, malformed JSON, an unknown model), plus the model list;
# 3. merges the profiles and builds the gateway again with them, into
#    target/pgo/mume-gateway.
# The two builds use their own target dirs, so `cargo build` keeps its cache.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/run.sh
source "$BENCH_DIR/run.sh"
STREAM_SECONDS=5

HOST=$(rustc -vV | sed -n 's/^host: //p')
TOOLS="$(rustc --print sysroot)/lib/rustlib/$HOST/bin"
if [[ ! -x "$TOOLS/llvm-profdata" ]]; then
    log "installing llvm-profdata (rustup component add llvm-tools)"
    rustup component add llvm-tools
fi
ensure_oha
ensure_nginx
raise_fd_limit

open_work pgo
# A fixed path, so that a second run rebuilds only what changed; the
# profile's own path below is new every run, so that every crate is built
# again with the new profile.
PROFILES=$REPO_DIR/target/pgo-generate/profiles
rm -rf "$PROFILES"

build() { # target-dir rustflags
    (cd "$REPO_DIR" && RUSTFLAGS="$2" CARGO_TARGET_DIR="$REPO_DIR/target/$1" \
        cargo build --release --bin mume-gateway --target "$HOST")
}

log "1/3 instrumented build"
build pgo-generate "-Cprofile-generate=$PROFILES"
GATEWAY_BIN=$REPO_DIR/target/pgo-generate/$HOST/release/mume-gateway

log "2/3 training load"
read -r UP_PORT STREAM_PORT GW_PORT <<<"$(free_ports 3)"
start_mock_upstream
start_stream_upstream
start_gateway
URL="http://127.0.0.1:$GW_PORT$API_PATH"
train() { # oha arguments after the common ones
    "$OHA" --no-tui --output-format json -m POST -H 'Content-Type: application/json' "$@" >/dev/null
}
PAID=(-H "Authorization: Bearer $BENCH_KEY")
train "${PAID[@]}" -d "$BODY" -n 3000 -c 16 "$URL"
train "${PAID[@]}" -d "$BODY" -q 500 -z 5s -c 16 -w "$URL"
train "${PAID[@]}" -d "$BODY" -n 20000 -c 16 "$URL"
train "${PAID[@]}" -d "$BODY" -z 3s -c 64 -w "$URL"
train -H 'Authorization: Bearer mume-wrong-key' -d "$BODY" -n 500 -c 4 "$URL"
train "${PAID[@]}" -d '{"model":' -n 500 -c 4 "$URL"
train "${PAID[@]}" -d '{"model":"up/none","messages":[{"role":"user","content":"hi"}]}' -n 500 -c 4 "$URL"
"$OHA" --no-tui --output-format json -H "Authorization: Bearer $BENCH_KEY" -n 500 -c 4 \
    "http://127.0.0.1:$GW_PORT/api/v1/models" >/dev/null
python3 "$BENCH_DIR/stream_clients.py" --port "$GW_PORT" --count 300 --key "$BENCH_KEY" \
    --pids "$GW_PID" >/dev/null 2>"$WORK/stream_clients.log"
kill -TERM "$GW_PID"
wait "$GW_PID" || true # the profile is written as the process exits

log "3/3 optimized build"
"$TOOLS/llvm-profdata" merge -o "$WORK/merged.profdata" "$PROFILES"/*.profraw
build pgo-use "-Cprofile-use=$WORK/merged.profdata"
mkdir -p "$REPO_DIR/target/pgo"
cp "$REPO_DIR/target/pgo-use/$HOST/release/mume-gateway" "$REPO_DIR/target/pgo/mume-gateway"
log "done: target/pgo/mume-gateway"
