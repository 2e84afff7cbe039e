"""Where the hub keeps things inside its data folder, and safe name checks."""

from __future__ import annotations

import os
import shutil
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
        """Make the folders, for the hub's user alone whatever the umask:
        they hold the accounts' files, the database and the TLS key. A
        folder made by hand with looser modes is tightened."""
        for d in (self.root, self.tls_dir, self.partial_dir, self.files_dir, self.cas_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        os.chmod(self.tls_dir, 0o700)
        if self.key_path.exists():
            os.chmod(self.key_path, 0o600)

    def create_database(self) -> None:
        """The SQLite file, readable by the hub's user alone (SQLite gives
        its -wal and -shm files the database's mode)."""
        fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.db_path, 0o600)

    def remove_account(self, user_id: int) -> None:
        """Delete a removed account's stored and partial files."""
        for d in (self.files_dir, self.partial_dir):
            shutil.rmtree(d / str(user_id), ignore_errors=True)

    def partial_path(self, user_id: int, sid: str) -> Path:
        return self.partial_dir / str(user_id) / f"{sid}.part"

    def file_path(self, user_id: int, name: str) -> Path:
        return self.files_dir / str(user_id) / check_name(name)
