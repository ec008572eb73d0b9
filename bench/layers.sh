#!/usr/bin/env bash
# What authentication, rate limits and credits cost: gateway CPU per request
# with those layers on the path, compared with the plain proxy they were
# added to.
#
#   bash bench/layers.sh                 # base = BASE_REV (default below)
#   BASE_REV=<commit> bash bench/layers.sh
#
# It builds two release binaries (the working tree, and BASE_REV in a
# temporary git worktree sharing ./target), starts them side by side behind
# the same mock upstream (nginx `return 200`, as in run.sh), and measures
# each target's own utime+stime over a fixed number of requests, in rounds,
# the targets taking turns. Targets:
#
#   plain     BASE_REV: the proxy before keys existed (no auth, no store)
#   unlimited the working tree, a key with no credit limit and no rate limits
#             (authentication, the usage record)
#   metered   the working tree, a key with credit and rpm/tpm/concurrency
#             limits (authentication, the limiter, the hold, the settlement
#             and the usage record): the path every paying request takes
#
# The table (median round, min-max in brackets) goes to stdout and to
# bench/LAYERS.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/run.sh
source "$BENCH_DIR/run.sh"
COMMAND_LINE="${BASE_REV:+BASE_REV=$BASE_REV }bash bench/layers.sh"

# The last commit before keys, credits and rate limits landed.
BASE_REV=${BASE_REV:-9cc3fdd}
LAYER_REQUESTS=${LAYER_REQUESTS:-20000}
LAYER_CONN=${LAYER_CONN:-16}
LAYER_ROUNDS=${LAYER_ROUNDS:-5}
LAYERS_MD=${LAYERS_MD:-$BENCH_DIR/LAYERS.md}
LAYER_TARGETS=(plain unlimited metered)

build_binaries() {
    log "building the working tree (cargo build --release)"
    (cd "$REPO_DIR" && cargo build --release)
    cp "$REPO_DIR/target/release/mume-gateway" "$WORK/mume-current"
    log "building $BASE_REV in a temporary worktree"
    git -C "$REPO_DIR" worktree add --detach "$WORK/base-src" "$BASE_REV" >&2
    (cd "$WORK/base-src" && CARGO_TARGET_DIR=$REPO_DIR/target cargo build --release)
    cp "$REPO_DIR/target/release/mume-gateway" "$WORK/mume-base"
    git -C "$REPO_DIR" worktree remove --force "$WORK/base-src"
    # ./target/release/mume-gateway is the working tree's again.
    cp "$WORK/mume-current" "$REPO_DIR/target/release/mume-gateway"
}

write_config() { # path port with-store?
    bench_config "$1" "$2"
    if [[ $3 == yes ]]; then
        printf '\n[store]\npath = "%s"\n' "$WORK/$(basename "$1" .toml).db" >>"$1"
    fi
}

start_one() { # name binary port with-store? key-args...
    local name=$1 bin=$2 port=$3 store=$4
    shift 4
    local conf=$WORK/$name.toml
    write_config "$conf" "$port" "$store"
    KEY[$name]=none
    if [[ $store == yes ]]; then
        KEY[$name]=$("$bin" keys --config "$conf" create --name "$name" "$@")
    fi
    "$bin" serve --config "$conf" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
    STARTED_PIDS+=("${PID[$name]}")
    wait_for_port "$port" "$name gateway"
}

layer_request() { # name out.json oha-args...
    local name=$1 out=$2
    shift 2
    "$OHA" --no-tui --output-format json -m POST \
        -H 'Content-Type: application/json' -H "Authorization: Bearer ${KEY[$name]}" \
        -d "$BODY" "$@" "http://127.0.0.1:${PORT[$name]}$API_PATH" >"$out"
}

layers_main() {
    ensure_oha
    ensure_nginx
    WORK=$(mktemp -d /tmp/mume-layers.XXXXXX)
    chmod 755 "$WORK"
    RAW=$WORK/raw
    mkdir -p "$RAW"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    build_binaries

    declare -gA KEY PID PORT
    read -r UP_PORT PORT[plain] PORT[unlimited] PORT[metered] <<<"$(free_ports 4)"
    start_mock_upstream
    start_one plain "$WORK/mume-base" "${PORT[plain]}" no
    start_one unlimited "$WORK/mume-current" "${PORT[unlimited]}" yes
    start_one metered "$WORK/mume-current" "${PORT[metered]}" yes \
        --credits 1000000 --rpm 4000000000 --tpm 4000000000 --max-concurrent 100000

    local t round before after
    for t in "${LAYER_TARGETS[@]}"; do
        layer_request "$t" "$RAW/warmup-$t.json" -n "$WARMUP_REQUESTS" -c "$LAYER_CONN"
    done
    : >"$RAW/ticks.txt"
    for round in $(seq "$LAYER_ROUNDS"); do
        for t in "${LAYER_TARGETS[@]}"; do
            log "cpu: $t, $LAYER_REQUESTS requests, $LAYER_CONN connections (round $round/$LAYER_ROUNDS)"
            before=$(cpu_ticks "${PID[$t]}")
            layer_request "$t" "$RAW/cpu-$t-$round.json" -n "$LAYER_REQUESTS" -c "$LAYER_CONN"
            after=$(cpu_ticks "${PID[$t]}")
            echo "$t $round $((after - before))" >>"$RAW/ticks.txt"
            sleep 0.5
        done
    done
    python3 - "$RAW" "$LAYERS_MD" "$(getconf CLK_TCK)" "$LAYER_REQUESTS" \
        "$BASE_REV" "$(git -C "$REPO_DIR" rev-parse --short HEAD)$(git -C "$REPO_DIR" diff --quiet HEAD || echo ' (with uncommitted changes)')" "$COMMAND_LINE" <<'PYEOF'
import glob, json, statistics, sys, time
raw, out, tck, n, base, head, command = sys.argv[1:]
tck, n = int(tck), int(n)
per = {}
for line in open(f"{raw}/ticks.txt"):
    t, _, ticks = line.split()
    per.setdefault(t, []).append(int(ticks) * 1e6 / tck / n)
for f in glob.glob(f"{raw}/cpu-*.json"):
    d = json.load(open(f))
    codes = d.get("statusCodeDistribution", {})
    bad = sum(v for k, v in codes.items() if not k.startswith("2"))
    bad += sum(d.get("errorDistribution", {}).values())
    if bad:
        sys.exit(f"{f}: {bad} requests did not get a 2xx: {codes} {d.get('errorDistribution')}")
def fmt(xs):
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"
plain = per["plain"]
rows = [
    "| target | CPU per request (µs) | over plain (µs, paired by round) |",
    "|---|---|---|",
]
for t, what in (("plain", f"plain proxy ({base})"),
                ("unlimited", "unlimited key: auth + usage record"),
                ("metered", "metered key: auth + limits + hold + settle + usage")):
    extra = "—" if t == "plain" else fmt([a - b for a, b in zip(per[t], plain)])
    rows.append(f"| {what} | {fmt(per[t])} | {extra} |")
over = statistics.median(a - b for a, b in zip(per["metered"], plain))
verdict = "met" if over <= 50 else "NOT met"
text = "\n".join([
    f"Layers benchmark, {time.strftime('%Y-%m-%d', time.gmtime())}, gateway {head} vs {base}; "
    f"{n} requests per round at -c 16, {len(plain)} rounds, median (min–max).",
    "",
    *rows,
    "",
    f"Target: auth + limits + credits add at most 50 µs per request: **{verdict}** "
    f"({over:.1f} µs).",
    "",
    f"Command: `{command}`",
])
print(text)
open(out, "w").write(text + "\n")
PYEOF
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    layers_main "$@"
fi
