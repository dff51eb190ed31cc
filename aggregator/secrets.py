"""Encryption at rest for channel secrets (tokens, passwords)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

KEY_FILE_NAME = "secret.key"


class SecretKeyError(Exception):
    """The secret key is missing, malformed, or does not match the stored secrets."""


class SecretBox:
    """Encrypts and decrypts small JSON documents with one Fernet key."""

    def __init__(self, key: str | bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise SecretKeyError(
                "the secret key is not a valid Fernet key (32 url-safe base64-encoded bytes); "
                "generate one with `python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`"
            ) from exc

    @classmethod
    def load(cls, data_dir: Path, key: str | None) -> SecretBox:
        """Use the given key, else the data directory's key file, creating it (mode 0600) when absent."""
        if key:
            return cls(key)
        path = data_dir / KEY_FILE_NAME
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def encrypt(self, values: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(values).encode())

    def decrypt(self, blob: bytes) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._fernet.decrypt(blob))
        except InvalidToken as exc:
            raise SecretKeyError(
                "stored channel secrets cannot be decrypted with this key: restore the key from backup "
                f"(AGGREGATOR_SECRET_KEY or {KEY_FILE_NAME} in the data directory)"
            ) from exc
        return data
