#!/usr/bin/env bash
# The project's test command (the README's, and what .ci/run calls).
# 1. Rust unit and integration tests (upstreams are in-process HTTP servers;
#    the Postgres and Redis backends run against the machine's servers).
# 2. The SDK compatibility suite: the official `openai` Python and Node
#    packages against the real gateway binary.
set -euo pipefail
cd "$(dirname "$0")/.."

# The multi-instance backends are tested against the machine's real
# PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379): start
# them if they are down. Each Postgres test makes a database of its own.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "tests: starting PostgreSQL" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "tests: starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
fi

cargo test --all-targets
cargo build --bin mume-gateway
MUME_BIN="$PWD/target/debug/mume-gateway" bash tests/sdk/run.sh
