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

    @property
    def cas_dir(self) -> Path:
        """Collected content, one file per BLAKE3 digest."""
        return self.root / "cas"

    def cas_path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("not a BLAKE3 digest")
        return self.cas_dir / digest[:2] / digest

    def create(self) -> None:
        for d in (self.root, self.tls_dir, self.partial_dir, self.files_dir, self.cas_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.tls_dir, 0o700)

    def partial_path(self, user_id: int, sid: str) -> Path:
        return self.partial_dir / str(user_id) / f"{sid}.part"

    def file_path(self, user_id: int, name: str) -> Path:
        return self.files_dir / str(user_id) / check_name(name)
