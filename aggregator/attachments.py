"""Attachment files on disk, content-addressed by SHA-256; the database keeps their metadata."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path


class AttachmentTooLarge(Exception):
    """An attachment is over the configured size limit."""


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def check_size(self, filename: str, size: int) -> None:
        if size > self.max_bytes:
            raise AttachmentTooLarge(
                f"attachment {filename!r} is {size} bytes, over the limit of {self.max_bytes} bytes "
                "(setting max_attachment_bytes)"
            )

    async def put(self, content: bytes) -> str:
        """Store the content durably (write, fsync, rename) and return its SHA-256."""
        digest = hashlib.sha256(content).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            await asyncio.to_thread(self._write, path, content)
        return digest

    @staticmethod
    def _write(path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
