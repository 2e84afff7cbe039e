#!/usr/bin/env bash
# Benchmark magic-wormhole, the peer of `freight send/receive`, on loopback:
#
#   bash bench/wormhole.sh [--size 1G] [--rounds 3] [--markdown FILE] [--freight CMD]
#
# prints one line per mode to stdout, `MODE BYTES SECONDS MB/S`, e.g.
#   wormhole-relay 1073741824 12.34 87.0     (both --no-listen: via the transit relay)
#   wormhole-direct 1073741824 9.87 108.8    (both listen: direct on 127.0.0.1)
# The rounds, the checks and the timing rule are in bench/wormhole_run.py
# (`bash bench/wormhole.sh --help`).
#
# --freight CMD runs a shell snippet in the same namespace after the wormhole
# rounds, with BENCH_FILE (the same test file) and BENCH_TMP (a scratch dir),
# so our own transfer is measured in the same run under the same conditions.
#
# Steps: (1) install the three PyPI packages into their own venv, once;
# (2) re-run this script in a new network namespace; (3) there, bring up `lo`
# and hand over to the Python driver. Needs root (for unshare -n).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
# Under .bench-tmp*, which .gitignore ignores. A venv of its own because
# magic-wormhole pins Twisted & co., which must not leak into the project venv.
WVENV="$REPO_DIR/.bench-tmp/wormhole-venv"
PACKAGES=(magic-wormhole magic-wormhole-mailbox-server magic-wormhole-transit-relay)

log() { printf '[wormhole] %s\n' "$*" >&2; }

# --help needs nothing installed: the driver uses only the standard library.
for arg in "$@"; do
    case "$arg" in -h | --help) exec python3 "$BENCH_DIR/wormhole_run.py" --help ;; esac
done

if [ "${FREIGHT_WORMHOLE_NETNS:-}" != 1 ]; then
    # --- (1) outside the namespace: it has no network, so install first ------
    # Idempotent: skip pip when all three import; a half-made venv is repaired.
    if ! "$WVENV/bin/python" -c 'import wormhole, wormhole_mailbox_server, wormhole_transit_relay' \
        2>/dev/null; then
        log "installing ${PACKAGES[*]} into $WVENV"
        mkdir -p "$(dirname "$WVENV")"
        [ -x "$WVENV/bin/python" ] || python3 -m venv "$WVENV"
        "$WVENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}"
    fi

    # --- (2) a private network namespace --------------------------------------
    # Why: a wormhole client offers every address of the machine as a direct
    # hint and drops 127.0.0.1 whenever it has another one, so on the host the
    # "direct" mode would run over eth0. In a namespace whose only interface is
    # `lo`, its only hint is 127.0.0.1. It also makes the servers' fixed ports
    # (4000, 4001) certainly free, and keeps every byte on this machine.
    if [ "$(id -u)" -ne 0 ]; then
        log "needs root for 'unshare -n' (a private network namespace)"
        exit 1
    fi
    cd "$REPO_DIR" # relative --markdown/--tmp paths are relative to the repo, as for bench.sh
    # unshare execs the command in place (same pid): Ctrl-C and SIGTERM reach
    # the driver, which stops its servers before the namespace vanishes.
    FREIGHT_WORMHOLE_NETNS=1 exec unshare --net -- bash "${BASH_SOURCE[0]}" "$@"
fi

# --- (3) inside the namespace -------------------------------------------------
# A new namespace has only `lo`, and it is down: no 127.0.0.1 until it is up.
ip link set lo up
exec "$WVENV/bin/python" "$BENCH_DIR/wormhole_run.py" "$@"
