"""An agent's own state: ``agent.json`` beside its identity key in
``$FREIGHT_CONFIG_DIR``, so several agents can run on one machine."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..client.config import ClientConfig, read_json, write_json_atomic
from ..errors import ConfigError


@dataclass
class AgentConfig:
    hub: str
    name: str
    # The hub certificate: pinned, and named in logins. With ca_file it is
    # empty (logins name the certificate seen) unless a TLS-inspecting proxy
    # hides the hub's own, given at enrolment.
    fingerprint: str = ""
    ca_file: str = ""
    proxy: str = ""
    roots: list[str] = field(default_factory=list)
    # May ``freight cp --overwrite`` replace existing files in the roots?
    # The owner of the machine decides; without it cp only adds files.
    allow_overwrite: bool = False
    # Targets ``freight forward AGENT:HOST:PORT`` may reach (HOST:PORT,
    # HOST:*, udp/HOST:PORT); nothing else is forwarded.
    allow_forward: list[str] = field(default_factory=list)
    # A cluster's node addresses (``hub`` among them); empty: one hub.
    nodes: list[str] = field(default_factory=list)

    @staticmethod
    def path(config: ClientConfig) -> Path:
        return config.root / "agent.json"

    @classmethod
    def load(cls, config: ClientConfig) -> AgentConfig:
        data: Any = read_json(cls.path(config), None)
        if data is None:
            raise ConfigError(
                f"no agent is enrolled in {config.root}",
                hint="run: freight agent enroll https://HUB:8443 TOKEN --root /some/folder",
            )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"{cls.path(config)} is damaged: {exc}") from None

    def save(self, config: ClientConfig) -> None:
        write_json_atomic(self.path(config), asdict(self))

    def real_roots(self) -> list[Path]:
        return [Path(r).resolve() for r in self.roots]
