"""A model or an adapter named by the user: a local directory, or a Hugging Face id.

One rule for the server (``engine``), ``doctor`` and ``download``, decided without the
network: an existing directory is used as it is (unless a revision is asked for, which only
the hub has); a name shaped like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``C:\\x``), or
one that exists on disk, is a directory that is missing; anything else (``name`` or
``org/name``) is a hub id, looked up in the Hugging Face cache. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["is_hub_id", "local_directory", "looks_like_path", "missing_directory"]


def looks_like_path(name: str) -> bool:
    """By its shape alone: a hub id is ``name`` or ``org/name``; anything else names a path."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or bool(Path(name).drive)


def local_directory(name: str, revision: str | None = None) -> Path | None:
    """The directory ``name`` is, used as it is (None: it is not one, or a revision is asked for)."""
    path = Path(name).expanduser()
    return path if revision is None and path.is_dir() else None


def is_hub_id(name: str, revision: str | None = None) -> bool:
    """Whether ``name`` (at ``revision``) is to be found on the Hugging Face hub."""
    if local_directory(name, revision) is not None or looks_like_path(name):
        return False
    return revision is not None or not Path(name).expanduser().exists()


def missing_directory(name: str) -> str:
    """What is wrong with a ``name`` that is neither a usable directory nor a hub id."""
    return "is not a directory" if Path(name).expanduser().exists() else "does not exist"
