"""Attachment files on disk, content-addressed by SHA-256; the database keeps their metadata."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

# Files up to this size travel with their ingest batch and are written by the batch writer, just
# before the transaction that refers to them (one flush for all); bigger ones are written at once.
DEFER_MAX_BYTES = 256 * 1024
# Below this many new files a batch is written with one fsync per file.
GROUP_SYNC_MIN = 8


class AttachmentTooLarge(Exception):
    """An attachment is over the configured size limit."""


def _load_syncfs() -> Callable[[str], None] | None:
    """syncfs(2) (Linux): flush one filesystem's writes in one call; None where it does not exist."""
    try:
        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            if call(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, f"syncfs {directory}: {os.strerror(error)}")
        finally:
            os.close(fd)

    return syncfs


_syncfs = _load_syncfs()


def path_for(root: str | Path, digest: str) -> str:
    return f"{root}/{digest[:2]}/{digest[2:4]}/{digest}"


def write_files(root: str | Path, files: Sequence[tuple[str, bytes]]) -> None:
    """Make each (sha256, content) durable under `root` unless it is there already.

    Never is a file at its final (content-addressed) name before its content is on disk: it is
    written under a temporary name, flushed, then renamed, and the rename flushed. Many files share
    the flushes (one syncfs each instead of one fsync per file: 0.6 ms a file here), which is what a
    batch of mail needs: hundreds of small files.
    """
    root = str(root)
    new: dict[str, bytes] = {}
    for digest, content in files:
        if digest not in new and not os.path.exists(path_for(root, digest)):
            new[digest] = content
    if not new:
        return
    grouped = len(new) >= GROUP_SYNC_MIN and _syncfs is not None
    pid = os.getpid()
    made: set[str] = set()
    moves = []
    # os functions on strings, not pathlib: this loop runs per file, and pathlib doubled its cost.
    for digest, content in new.items():
        directory = f"{root}/{digest[:2]}/{digest[2:4]}"
        if directory not in made:
            os.makedirs(directory, exist_ok=True)
            made.add(directory)
        tmp = f"{directory}/.{digest}.{pid}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            if not grouped:
                os.fsync(fd)
        finally:
            os.close(fd)
        moves.append((tmp, f"{directory}/{digest}"))
    if grouped:
        assert _syncfs is not None
        _syncfs(root)
    for tmp, final in moves:
        os.replace(tmp, final)
    if grouped:
        assert _syncfs is not None
        _syncfs(root)
    else:
        for directory in made:
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class AttachmentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path_for(self, sha256: str) -> Path:
        return Path(path_for(self.root, sha256))

    def check_size(self, filename: str, size: int) -> None:
        if size > self.max_bytes:
            raise AttachmentTooLarge(
                f"attachment {filename!r} is {size} bytes, over the limit of {self.max_bytes} bytes "
                "(setting max_attachment_bytes)"
            )

    async def put(self, content: bytes) -> str:
        """Store the content durably (write, fsync, rename) and return its SHA-256."""
        digest = hashlib.sha256(content).hexdigest()
        await asyncio.to_thread(write_files, self.root, [(digest, content)])
        return digest

    async def put_many(self, contents: Sequence[bytes]) -> list[str]:
        """`put` for many contents in one hand-off to a thread; their SHA-256 digests in order."""
        files = [(hashlib.sha256(content).hexdigest(), content) for content in contents]
        if files:
            await asyncio.to_thread(write_files, self.root, files)
        return [digest for digest, _ in files]
