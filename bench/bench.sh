#!/usr/bin/env bash
# Entry point for `make bench`: install/check the peers, then run the driver.
# All arguments go to bench.py (see `bash bench/bench.sh --help`).
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export VENV="${VENV:-$REPO_DIR/.venv}"
"$BENCH_DIR/setup_peers.sh"
cd "$REPO_DIR"  # relative --markdown/--tmp paths are relative to the repo
# Byte-compile the package first, as an installed one is: the environment may set
# PYTHONDONTWRITEBYTECODE, and then every freight command compiles its modules anew.
"$VENV/bin/python" -m compileall -q "$REPO_DIR/freight" >/dev/null
exec "$VENV/bin/python" "$BENCH_DIR/bench.py" "$@"
