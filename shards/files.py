"""Durable files, for everything that must survive a kill or a power loss (shards, manifests, journals, checkpoints):
a file's sha256, fsync of a file or folder, and atomic writes (temp file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (hashlib releases the GIL on them: threads hash files in parallel)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a folder's entries (new names, renames), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """`text` (UTF-8) into `path` as one step: written to PATH.tmp and synced, renamed over `path`, the folder synced.

    A reader sees the old file or the new one, never half of it, whatever moment the writer is killed at.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
