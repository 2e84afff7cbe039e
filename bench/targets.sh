#!/usr/bin/env bash
# Run the target checks (bench/targets.py) with the project venv, from the repo root:
#   bash bench/targets.sh limits|memory|crash [options] [--markdown FILE]
# Global options (--tmp, --markdown, --keep) go before the subcommand; see --help.
# Needs only the venv (no scp/rsync/tus peers), so setup_peers.sh is not run.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export VENV="${VENV:-$REPO_DIR/.venv}"
cd "$REPO_DIR"  # relative --markdown/--tmp paths are relative to the repo
exec "$VENV/bin/python" "$BENCH_DIR/targets.py" "$@"
