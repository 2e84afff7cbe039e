#!/usr/bin/env bash
# Entry point for `make bench`: install/check the peers, then run the driver.
# All arguments go to bench.py (see `bash bench/bench.sh --help`).
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export VENV="${VENV:-$REPO_DIR/.venv}"
"$BENCH_DIR/setup_peers.sh"
cd "$REPO_DIR"  # relative --markdown/--tmp paths are relative to the repo
exec "$VENV/bin/python" "$BENCH_DIR/bench.py" "$@"
