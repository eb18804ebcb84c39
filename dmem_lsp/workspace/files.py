"""Where a workspace's memory files live, and how each one is written, kept private and set aside.

``platformdirs.user_data_dir("dmem-lsp")/workspaces/<name>-<hash>/`` holds one folder per
workspace (see ``store``). Folders are 0700 and files 0600 (memory is private data). Every file
is replaced atomically (a temp file in the same folder, fsync, rename), so a crash leaves the old
or the new version; temp files a kill left behind are removed by whoever holds the lock. A file
that cannot be used is moved aside under a new name, never deleted.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import platformdirs

import memory.files

__all__ = [
    "PRIVATE_DIR", "PRIVATE_FILE", "StoreError", "atomic_write", "clean_temporary_files", "memory_root",
    "move_aside", "private_dirs", "workspace_dir",
]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class StoreError(RuntimeError):
    """A memory file that cannot be used, with a message a user can act on."""


def memory_root() -> Path:
    """Where per-workspace memory is kept."""
    return Path(platformdirs.user_data_dir("dmem-lsp")) / "workspaces"


def workspace_dir(root: Path) -> Path:
    """The memory folder of workspace folder ``root``: its name and a hash of its resolved path."""
    resolved = root.expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", resolved.name)[:40] or "root"
    return memory_root() / f"{name}-{digest}"


def atomic_write(path: Path, data: bytes) -> None:
    """Create ``path``'s folders 0700 (``private_dirs``), then ``memory.files.atomic_write``: a
    temporary file (0600) in the same folder, fsync, rename. memory.files imports no torch."""
    private_dirs(path.parent)
    memory.files.atomic_write(path, data)


def private_dirs(path: Path) -> None:
    """Create ``path`` and its parents up to the data folder, 0700 (memory is private data)."""
    top = memory_root().parent
    chain = [path, *path.parents]
    if top not in chain:  # a place of the caller's choosing (benchmarks)
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        return
    for directory in reversed(chain[: chain.index(top) + 1]):
        if not directory.is_dir():
            directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        try:
            if directory.stat().st_mode & 0o777 != PRIVATE_DIR:
                directory.chmod(PRIVATE_DIR)
        except OSError:
            pass  # not ours to change: the files in it are 0600 anyway


def move_aside(path: Path, why: str) -> Path:
    """Rename ``path`` to ``<name>.<why>-<time>-<random>`` beside it (kept for the user, never deleted)."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    os.replace(path, aside)
    return aside


def clean_temporary_files(folders: Iterable[Path]) -> list[str]:
    """Remove the temp files (``.*.tmp``) of saves a kill interrupted; the names removed.
    Only for the holder of the lock: another process's save may be under way otherwise."""
    removed = []
    for folder in folders:
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed
