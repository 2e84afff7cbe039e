#!/usr/bin/env bash
# The relay benchmarks (bench/relay.py), in one run:
#
#   bash bench/relay.sh [--size 1G] [--rounds 3] [--markdown FILE]
#
# (1)+(2) magic-wormhole relay and direct mode, then `freight send/receive`
#         (default transport, --transport ws, --transport http) of the same
#         file, all inside one private network namespace: bench/wormhole.sh
#         runs our part through its --freight hook, so the hub and both CLI
#         clients run in the same namespace, right after the wormhole rounds.
#         Then, in the same namespace, one SDK pipe of the same size per
#         transport (ws, http) x data path (auto = lane, tls = inside the
#         attachment), since the CLI cannot choose the data path.
# (3)     200 concurrent `connect` pipes of 8 x 1 MiB through one hub (SDK),
#         hub RSS sampled.
# (4)     connect -> first byte latency (SDK), 101 samples.
# (3) and (4) run on the host's loopback. Then one table of the targets
# (medians and ratios from this run) on stdout, appended to FILE with
# --markdown. Needs root (unshare -n) and, on first use, network (pip installs
# magic-wormhole into .bench-tmp/wormhole-venv). Exit status 1 if a part
# failed or a target was missed.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export VENV="${VENV:-$REPO_DIR/.venv}"
PY="$VENV/bin/python"

SIZE=1G
ROUNDS=3
MARKDOWN=""
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --markdown) MARKDOWN="$2"; shift 2 ;;
        --size=*) SIZE="${1#*=}"; shift ;;
        --rounds=*) ROUNDS="${1#*=}"; shift ;;
        --markdown=*) MARKDOWN="${1#*=}"; shift ;;
        -h | --help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/relay.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$REPO_DIR" # relative --markdown paths are relative to the repo, as for bench.sh
# Byte-compile the package first, as an installed one is: the environment may set
# PYTHONDONTWRITEBYTECODE, and then every freight command compiles its modules anew.
"$VENV/bin/python" -m compileall -q "$REPO_DIR/freight" >/dev/null
mkdir -p .bench-tmp
RESULTS="$(mktemp -d "$REPO_DIR/.bench-tmp/relay-results.XXXXXX")"
trap 'rm -rf "$RESULTS"' EXIT
log() { printf '[relay] %s\n' "$*" >&2; }
rc=0

# (1)+(2): the wormhole rows and then ours go to $RESULTS/transfer.md (one
# table, same columns); the wormhole medians are also on stdout, kept in
# wormhole.out for the ratios.
log "(1)+(2) magic-wormhole and freight send/receive, $SIZE x $ROUNDS round(s), one namespace"
# Both freight parts run even if the first misses its target; the hook's exit
# status says whether either failed.
SR="$(printf '%q ' "$PY" "$BENCH_DIR/relay.py" sendrecv --out "$RESULTS/sendrecv.json")"
DP="$(printf '%q ' "$PY" "$BENCH_DIR/relay.py" datapath --out "$RESULTS/datapath.json")"
SNIPPET="$SR; a=\$?; $DP; b=\$?; exit \$((a | b))"
bash "$BENCH_DIR/wormhole.sh" --size "$SIZE" --rounds "$ROUNDS" \
    --markdown "$RESULTS/transfer.md" --freight "$SNIPPET" | tee "$RESULTS/wormhole.out" || rc=1
"$REPO_DIR/.bench-tmp/wormhole-venv/bin/python" -c \
    'import importlib.metadata as m; print(m.version("magic-wormhole"))' \
    >"$RESULTS/wormhole-version.txt" 2>/dev/null || true

log "(3) 200 concurrent connect pipes"
"$PY" "$BENCH_DIR/relay.py" pipes --out "$RESULTS/pipes.json" || rc=1
log "(4) connect -> first byte"
"$PY" "$BENCH_DIR/relay.py" latency --out "$RESULTS/latency.json" || rc=1

CMDLINE="$(printf '%q ' bash bench/relay.sh "${ORIG_ARGS[@]}")"
REPORT=(report --results "$RESULTS" --command "${CMDLINE% }")
[ -n "$MARKDOWN" ] && REPORT+=(--markdown "$MARKDOWN")
"$PY" "$BENCH_DIR/relay.py" "${REPORT[@]}" || rc=1
exit "$rc"
