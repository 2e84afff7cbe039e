#!/usr/bin/env bash
# Idempotent installer for the benchmark peers (run as root on Debian).
#   - apt: openssh-server, openssh-client, rsync, iperf3
#   - npm: @tus/server + @tus/file-store into bench/.node/
#   - pip: tuspy into the project venv ($VENV, default <repo>/.venv)
# Only installs what is missing, so re-running is cheap.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
VENV="${VENV:-$REPO_DIR/.venv}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[setup_peers] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------
apt_missing=()
for pkg in openssh-server openssh-client rsync iperf3 nodejs npm; do
    # dpkg-query exits 0 even for "deinstall" state, so check the status text.
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        # node/npm may come from a non-Debian install (nodesource, nvm): accept that.
        if { [ "$pkg" = nodejs ] && command -v node >/dev/null; } ||
           { [ "$pkg" = npm ] && command -v npm >/dev/null; }; then
            continue
        fi
        apt_missing+=("$pkg")
    fi
done
if [ "${#apt_missing[@]}" -gt 0 ]; then
    log "apt installing: ${apt_missing[*]}"
    # Update the index only once, and only if it looks empty/stale.
    if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e lock -e partial)" ] ||
       ! $SUDO apt-get install -y --no-install-recommends "${apt_missing[@]}"; then
        $SUDO apt-get update
        $SUDO apt-get install -y --no-install-recommends "${apt_missing[@]}"
    fi
    # The Debian package enables/starts the system sshd via systemd where
    # available; the benchmark never uses it (it runs its own sshd on a
    # private config), so we leave the system service as the admin likes it.
else
    log "apt packages present"
fi
# sshd refuses to start without its privilege-separation directory.
$SUDO mkdir -p /run/sshd

# --- npm: tus server --------------------------------------------------------
NODE_PREFIX="$BENCH_DIR/.node"
if [ ! -d "$NODE_PREFIX/node_modules/@tus/server" ] || [ ! -d "$NODE_PREFIX/node_modules/@tus/file-store" ]; then
    log "npm installing @tus/server @tus/file-store into $NODE_PREFIX"
    mkdir -p "$NODE_PREFIX"
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error @tus/server @tus/file-store
else
    log "npm packages present"
fi

# --- pip: tuspy client ------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "no venv at $VENV (set VENV=...)"; exit 1
fi
if ! "$VENV/bin/python" -c 'import tusclient' 2>/dev/null; then
    log "pip installing tuspy into $VENV"
    "$VENV/bin/pip" install --quiet tuspy
else
    log "tuspy present"
fi

# --- keep generated stuff out of git ---------------------------------------
GI="$BENCH_DIR/.gitignore"
for pat in ".node/" "__pycache__/"; do
    grep -qxF "$pat" "$GI" 2>/dev/null || echo "$pat" >> "$GI"
done
log "done"
