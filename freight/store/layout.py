"""Where the hub keeps things inside its data folder, and safe name checks."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..names import check_name


@dataclass(frozen=True)
class DataLayout:
    root: Path

    @property
    def db_path(self) -> Path:
        return self.root / "freight.db"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def cert_path(self) -> Path:
        return self.tls_dir / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls_dir / "key.pem"

    @property
    def partial_dir(self) -> Path:
        return self.root / "partial"

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    def create(self) -> None:
        for d in (self.root, self.tls_dir, self.partial_dir, self.files_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tls_dir, 0o700)

    def partial_path(self, user_id: int, sid: str) -> Path:
        return self.partial_dir / str(user_id) / f"{sid}.part"

    def file_path(self, user_id: int, name: str) -> Path:
        return self.files_dir / str(user_id) / check_name(name)
