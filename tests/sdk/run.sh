#!/usr/bin/env bash
# SDK compatibility suite: the official `openai` Python and Node packages
# against a real Mume Gateway binary serving the built-in mock provider and
# an Anthropic-kind provider backed by anthropic_mock.py, with MCP tools
# served by mcp_server.py (the official `mcp` SDK's FastMCP).
#
#   MUME_BIN=path/to/mume-gateway bash tests/sdk/run.sh
#
# MUME_BIN defaults to target/debug/mume-gateway under the repository root
# (a relative MUME_BIN is taken relative to the current directory). PYTHON
# selects the interpreter (default python3). Works from any directory and
# needs no stdin. Exits non-zero if either suite fails.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SDK_DIR/../.." && pwd)"
CONFIG="$SDK_DIR/gateway.toml"
PYTHON="${PYTHON:-python3}"

MUME_BIN="${MUME_BIN:-$REPO_ROOT/target/debug/mume-gateway}"
case "$MUME_BIN" in
  /*) ;;
  *) MUME_BIN="$PWD/$MUME_BIN" ;;
esac
if [[ ! -x "$MUME_BIN" ]]; then
  echo "sdk: gateway binary not found or not executable: $MUME_BIN" >&2
  echo "sdk: build it (cargo build --bin mume-gateway) or set MUME_BIN" >&2
  exit 2
fi

log() { echo "sdk: $*" >&2; }

# --- dependencies -----------------------------------------------------------
if ! "$PYTHON" -c 'import openai, pytest, jsonschema, yaml; from mcp.server.fastmcp import FastMCP' >/dev/null 2>&1; then
  log "installing the openai, pytest, jsonschema, pyyaml and mcp Python packages"
  # mcp 2.x renamed FastMCP, which mcp_server.py uses.
  "$PYTHON" -m pip install -q openai pytest jsonschema pyyaml "mcp<2" </dev/null
fi
log "installing the Node SDK (npm ci)"
(cd "$SDK_DIR/node" && npm ci --no-audit --no-fund --loglevel=error </dev/null)

WORK_DIR="$(mktemp -d)"
# The suite's own store, in the scratch directory.
RUN_CONFIG="$WORK_DIR/gateway.toml"
cp "$CONFIG" "$RUN_CONFIG"
printf '\n[store]\npath = "%s"\n' "$WORK_DIR/sdk.db" >>"$RUN_CONFIG"
CONFIG="$RUN_CONFIG"


"$MUME_BIN" check-config --config "$CONFIG" >&2

# Keys, made with the CLI the README documents: an unlimited one for the
# suites, and one without credit to see the SDKs' handling of 402.
MUME_API_KEY="$("$MUME_BIN" keys create --config "$CONFIG" --name sdk-suite)"
MUME_POOR_KEY="$("$MUME_BIN" keys create --config "$CONFIG" --name sdk-poor --credits 0)"
export MUME_API_KEY MUME_POOR_KEY

# --- gateway ------------------------------------------------------------------
# Local requests must never go through a proxy configured for the machine.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
export no_proxy="$NO_PROXY"

PORT="$("$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()')"
BASE="http://127.0.0.1:$PORT"

GW_LOG="$WORK_DIR/gateway.log"
GW_PID=""

ANTHROPIC_PID=""
SEARXNG_PID=""
MCP_PID=""
MCP_SSE_PID=""

cleanup() {
  local rc=$?
  for pid in "$ANTHROPIC_PID" "$SEARXNG_PID" "$MCP_PID" "$MCP_SSE_PID"; do
    if [[ -n "$pid" ]]; then
      kill "$pid" 2>/dev/null || true
    fi
  done
  if [[ -n "$GW_PID" ]] && kill -0 "$GW_PID" 2>/dev/null; then
    kill "$GW_PID" 2>/dev/null || true
    # The gateway drains in-flight work on SIGTERM; do not wait forever.
    for _ in $(seq 1 50); do
      kill -0 "$GW_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$GW_PID" 2>/dev/null; then
      kill -9 "$GW_PID" 2>/dev/null || true
    fi
    wait "$GW_PID" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -s "$GW_LOG" ]]; then
    echo "sdk: last gateway log lines:" >&2
    tail -n 40 "$GW_LOG" >&2 || true
  fi
  rm -rf "$WORK_DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# An Anthropic Messages API on a free port, for the anthropic/* model.
ANTHROPIC_PORT_FILE="$WORK_DIR/anthropic.port"
"$PYTHON" "$SDK_DIR/anthropic_mock.py" "$ANTHROPIC_PORT_FILE" </dev/null >"$WORK_DIR/anthropic.log" 2>&1 &
ANTHROPIC_PID=$!
for _ in $(seq 1 50); do
  [[ -s "$ANTHROPIC_PORT_FILE" ]] && break
  sleep 0.1
done
[[ -s "$ANTHROPIC_PORT_FILE" ]] || { log "the Anthropic mock did not start"; exit 1; }
printf '
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:%s/v1"
api_key_env = "ANTHROPIC_API_KEY"

[[models]]
id = "anthropic/claude-mock"
max_output_tokens = 1024
' \
  "$(cat "$ANTHROPIC_PORT_FILE")" >>"$RUN_CONFIG"
# A SearXNG JSON API on a free port, for web search.
SEARXNG_PORT_FILE="$WORK_DIR/searxng.port"
"$PYTHON" "$SDK_DIR/searxng_mock.py" "$SEARXNG_PORT_FILE" </dev/null >"$WORK_DIR/searxng.log" 2>&1 &
SEARXNG_PID=$!
for _ in $(seq 1 50); do
  [[ -s "$SEARXNG_PORT_FILE" ]] && break
  sleep 0.1
done
[[ -s "$SEARXNG_PORT_FILE" ]] || { log "the SearXNG mock did not start"; exit 1; }
printf '\n[web_search]\nbackend = "searxng"\nurl = "http://127.0.0.1:%s"\nprice = "0.001"\n' \
  "$(cat "$SEARXNG_PORT_FILE")" >>"$RUN_CONFIG"
# Two FastMCP servers on free ports: Streamable HTTP (/mcp) and the legacy
# HTTP+SSE transport (/sse).
MCP_PORT_FILE="$WORK_DIR/mcp.port"
"$PYTHON" "$SDK_DIR/mcp_server.py" streamable-http "$MCP_PORT_FILE" </dev/null >"$WORK_DIR/mcp.log" 2>&1 &
MCP_PID=$!
MCP_SSE_PORT_FILE="$WORK_DIR/mcp-sse.port"
"$PYTHON" "$SDK_DIR/mcp_server.py" sse "$MCP_SSE_PORT_FILE" </dev/null >"$WORK_DIR/mcp-sse.log" 2>&1 &
MCP_SSE_PID=$!
# mcp_server.py writes its port before it listens: wait for both.
listening() {
  [[ -s "$1" ]] && "$PYTHON" -c 'import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' "$(cat "$1")" >/dev/null 2>&1
}
for _ in $(seq 1 100); do
  listening "$MCP_PORT_FILE" && listening "$MCP_SSE_PORT_FILE" && break
  sleep 0.1
done
listening "$MCP_PORT_FILE" || { log "the Streamable HTTP MCP server did not start"; exit 1; }
listening "$MCP_SSE_PORT_FILE" || { log "the HTTP+SSE MCP server did not start"; exit 1; }
export MUME_MCP_URL="http://127.0.0.1:$(cat "$MCP_PORT_FILE")/mcp"
export MUME_MCP_SSE_URL="http://127.0.0.1:$(cat "$MCP_SSE_PORT_FILE")/sse"
# Loopback is refused by default; the operator allowlist lets the local
# servers through (and only 127.0.0.1: "localhost" stays refused). The
# registered server's X-Team header comes from MUME_SDK_MCP_TEAM.
printf '\n[mcp]\nallowed_hosts = ["127.0.0.1"]\n\n[[mcp.servers]]\nlabel = "registered"\nurl = "%s"\nheaders = { "X-Team" = "MUME_SDK_MCP_TEAM" }\nkeys = ["*"]\n' \
  "$MUME_MCP_URL" >>"$RUN_CONFIG"
export MUME_SDK_MCP_TEAM="green"
# The mock checks that a key arrives in x-api-key; any value will do.
export ANTHROPIC_API_KEY="sk-ant-sdk-suite"
"$MUME_BIN" check-config --config "$CONFIG" >&2

log "starting $MUME_BIN on 127.0.0.1:$PORT"
"$MUME_BIN" serve --config "$CONFIG" --listen "127.0.0.1:$PORT" </dev/null >"$GW_LOG" 2>&1 &
GW_PID=$!

healthy() {
  "$PYTHON" -c 'import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)' "$BASE/health" >/dev/null 2>&1
}

deadline=$((SECONDS + 20))
until healthy; do
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    log "the gateway exited before becoming healthy"
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    log "the gateway did not answer GET /health within 20 s"
    exit 1
  fi
  sleep 0.2
done
log "gateway healthy at $BASE"

export MUME_BASE_URL="$BASE/api/v1"

# --- suites -------------------------------------------------------------------
failed=()

log "Python suite (pytest)"
if ! (cd "$SDK_DIR/python" && "$PYTHON" -m pytest -q -p no:cacheprovider </dev/null); then
  failed+=(python)
fi

log "Node suite (node --test)"
if ! (cd "$SDK_DIR/node" && node --test </dev/null); then
  failed+=(node)
fi

if ((${#failed[@]})); then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "all SDK suites passed"
