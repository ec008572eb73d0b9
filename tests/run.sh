#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls).
# 1. Rust unit and integration tests (upstreams are in-process HTTP servers).
# 2. The SDK compatibility suite: the official `openai` Python and Node
#    packages against the real gateway binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --all-targets
cargo build --bin mume-gateway
MUME_BIN="$PWD/target/debug/mume-gateway" bash tests/sdk/run.sh
