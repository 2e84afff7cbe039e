"""Client state on disk: logins (with a hub's proxy and CA, if any), pinned
fingerprints, resumable transfers.

Everything lives in ``$FREIGHT_CONFIG_DIR`` (default
``$XDG_CONFIG_HOME/freight``), so several clients can share one machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotLoggedIn

# The choices a command offers (here, not in .session, so the command line
# can show and check them without loading the transport).
DATA_PATHS = ("auto", "direct", "tls")
TRANSPORTS = ("auto", "ws", "http")

# Per-command choices, set by ``freight --proxy/--ca-file`` or by hand; they
# win over what was saved at login (see HubSession.from_config).
PROXY_ENV = "FREIGHT_PROXY"
CA_FILE_ENV = "FREIGHT_CA_FILE"


def config_dir() -> Path:
    env = os.environ.get("FREIGHT_CONFIG_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "freight"


def write_json_atomic(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write via a temporary file and rename, so a crash leaves old or new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone once replaced; a leftover on failure


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


class ClientConfig:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or config_dir()

    @property
    def _config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def _known_path(self) -> Path:
        return self.root / "known_hubs.json"

    def pinned(self, hostport: str) -> str | None:
        value = read_json(self._known_path, {}).get(hostport)
        return str(value) if value else None

    def pin(self, hostport: str, fingerprint: str) -> None:
        known = read_json(self._known_path, {})
        known[hostport] = fingerprint
        write_json_atomic(self._known_path, known)

    def save_login(
        self,
        url: str,
        user: str,
        token: str,
        role: str,
        *,
        proxy: str | None = None,
        ca_file: str | None = None,
        nodes: list[str] | None = None,
    ) -> None:
        """Remember a login, and how this hub is reached and trusted.

        ``proxy`` (an HTTP proxy URL, credentials included: this file is
        0600) and ``ca_file`` (a CA bundle that replaces fingerprint pinning)
        are saved with the login because they belong to the network this hub
        is reached from; logging in again without them forgets them.
        ``nodes``: a cluster's node addresses (``url`` among them).
        """
        cfg = read_json(self._config_path, {})
        cfg["hub"] = url
        login: dict[str, Any] = {"user": user, "token": token, "role": role}
        if nodes:
            login["nodes"] = nodes
        if proxy is not None:
            login["proxy"] = proxy
        if ca_file is not None:
            login["ca_file"] = ca_file
        cfg.setdefault("hubs", {})[url] = login
        write_json_atomic(self._config_path, cfg)

    def forget_login(self, url: str) -> None:
        """Drop the saved login for ``url`` (the pinned fingerprint stays)."""
        cfg = read_json(self._config_path, {})
        cfg.get("hubs", {}).pop(url, None)
        if cfg.get("hub") == url:
            cfg.pop("hub")
        write_json_atomic(self._config_path, cfg)

    def current(self, url: str | None = None) -> tuple[str, dict[str, str]]:
        """The hub to talk to (given or last logged in) and its login."""
        cfg = read_json(self._config_path, {})
        url = url or cfg.get("hub") or os.environ.get("FREIGHT_HUB")
        if not url:
            raise NotLoggedIn("not logged in to any hub")
        login = cfg.get("hubs", {}).get(url)
        if not login:
            raise NotLoggedIn(f"not logged in to {url}")
        return url, login

    # --- resumable transfer state ----------------------------------------

    def transfer_path(self, kind: str, *parts: str) -> Path:
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
        return self.root / "transfers" / f"{kind}-{key}.json"
