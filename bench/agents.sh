#!/usr/bin/env bash
# The agent benchmarks (bench/agents.py), in one run:
#
#   bash bench/agents.sh [--files 10000] [--file-size 4K] [--dirs 100] [--rounds 3]
#                        [--agents 5000] [--workers 4] [--idle 60] [--poll 3600]
#                        [--markdown FILE]
#
# (1) `freight cp -r AGENT:/tree ./dest/` of --files small random files (4 KiB
#     each, in --dirs folders) from a real agent on loopback, against `scp -r`
#     and `rsync -a` over a private sshd on loopback; medians of --rounds,
#     every copy verified. Targets: >= 2x scp -r, >= 1x rsync -a.
# (2) One hub holding --agents idle attached agents (lightweight: enrolled
#     through the REST API, each one control WebSocket with Hello and Listen,
#     no lane) from --workers client processes: time to attach them all, hub
#     VmRSS/VmHWM, hub CPU over --idle seconds with the heartbeats running.
#     Targets: < 1 GiB, < 10 % of one core. Run twice: heartbeats only, then
#     with each agent also asking for its collection policies every --poll
#     seconds (GET /v1/collect/policies), as `freight agent run` does when
#     idle; --poll 0 skips that second run.
# Then one table of the targets on stdout, appended (with the detail tables) to
# FILE with --markdown. Needs openssh-server and rsync (installed with apt-get
# when missing, as root). Exit status 1 if a part failed or a target was missed.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
export VENV="${VENV:-$REPO_DIR/.venv}"
PY="$VENV/bin/python"

FILES=10000
FILE_SIZE=4K
DIRS=100
ROUNDS=3
AGENTS=5000
WORKERS=4
IDLE=60
POLL=3600  # as freight agent run (POLICY_POLL in freight/agent/offers.py)
MARKDOWN=""
ORIG_ARGS=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --files | --file-size | --dirs | --rounds | --agents | --workers | --idle | --poll | --markdown)
            [ $# -ge 2 ] || { echo "bench/agents.sh: $1 needs a value" >&2; exit 2; }
            v="$2"
            case "$1" in
                --files) FILES="$v" ;; --file-size) FILE_SIZE="$v" ;; --dirs) DIRS="$v" ;;
                --rounds) ROUNDS="$v" ;; --agents) AGENTS="$v" ;; --workers) WORKERS="$v" ;;
                --idle) IDLE="$v" ;; --poll) POLL="$v" ;; --markdown) MARKDOWN="$v" ;;
            esac
            shift 2 ;;
        -h | --help) sed -n '2,/^set -e/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/agents.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[agents] %s\n' "$*" >&2; }

# sshd and rsync for the peers of (1); nothing else (bench/setup_peers.sh
# installs the whole set for bench.sh).
missing=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v scp >/dev/null || missing+=(openssh-client)
command -v rsync >/dev/null || missing+=(rsync)
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    log "apt installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" ||
        { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
fi
[ "$(id -u)" -eq 0 ] && mkdir -p /run/sshd  # sshd's privilege-separation directory

cd "$REPO_DIR" # relative --markdown paths are relative to the repo, as for bench.sh
# Byte-compile the package first, as an installed one is: the environment may set
# PYTHONDONTWRITEBYTECODE, and then every freight command compiles its modules anew.
"$VENV/bin/python" -m compileall -q "$REPO_DIR/freight" >/dev/null
mkdir -p .bench-tmp
RESULTS="$(mktemp -d "$REPO_DIR/.bench-tmp/agents-results.XXXXXX")"
trap 'rm -rf "$RESULTS"' EXIT
rc=0

log "(1) freight cp -r vs scp -r vs rsync -a: $FILES x $FILE_SIZE files, $ROUNDS round(s)"
"$PY" "$BENCH_DIR/agents.py" tree --files "$FILES" --file-size "$FILE_SIZE" --dirs "$DIRS" \
    --rounds "$ROUNDS" --out "$RESULTS/tree.json" || rc=1
log "(1b) freight push DIR vs scp -r vs rsync -a to the same sshd: $FILES x $FILE_SIZE files"
"$PY" "$BENCH_DIR/agents.py" tree --files "$FILES" --file-size "$FILE_SIZE" --dirs "$DIRS" \
    --rounds "$ROUNDS" --direction push --out "$RESULTS/tree-push.json" || rc=1
log "(1c) freight pull DIR/ vs scp -r vs rsync -a from the same sshd: $FILES x $FILE_SIZE files"
"$PY" "$BENCH_DIR/agents.py" tree --files "$FILES" --file-size "$FILE_SIZE" --dirs "$DIRS" \
    --rounds "$ROUNDS" --direction pull --out "$RESULTS/tree-pull.json" || rc=1

log "(2) one hub, $AGENTS idle agents from $WORKERS processes, $IDLE s idle, heartbeats only"
# The hub and the clients inherit the open-file limit agents.py raises.
"$PY" "$BENCH_DIR/agents.py" idle --agents "$AGENTS" --workers "$WORKERS" --idle "$IDLE" \
    --out "$RESULTS/idle.json" || rc=1
PARTS=tree,tree-push,tree-pull,idle
if [ "$POLL" != 0 ]; then
    log "(2b) the same with a policy poll every $POLL s per agent, as freight agent run does"
    "$PY" "$BENCH_DIR/agents.py" idle --agents "$AGENTS" --workers "$WORKERS" --idle "$IDLE" \
        --poll-policies "$POLL" --out "$RESULTS/idle-poll.json" || rc=1
    PARTS=tree,tree-push,tree-pull,idle,idle-poll
fi

CMDLINE="$(printf '%q ' bash bench/agents.sh "${ORIG_ARGS[@]}")"
REPORT=(report --results "$RESULTS" --parts "$PARTS" --command "${CMDLINE% }")
[ -n "$MARKDOWN" ] && REPORT+=(--markdown "$MARKDOWN")
"$PY" "$BENCH_DIR/agents.py" "${REPORT[@]}" || rc=1
exit "$rc"
