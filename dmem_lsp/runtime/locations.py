"""A model or an adapter named by the user: a local directory, or a Hugging Face id.

One rule for the server (``engine``), ``doctor`` and ``download``, decided without the
network: an existing directory is used as it is (unless a revision is asked for, which only
the hub has); a name shaped like a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, ``C:\\x``), or
one that exists on disk, is a directory that is missing; anything else (``name`` or
``org/name``) is a hub id, looked up in the Hugging Face cache. ``resolve_local`` then
turns a hub id into its cached (or downloaded) directory. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from dmem_lsp.runtime.options import EngineError

__all__ = ["download_command", "is_hub_id", "local_directory", "looks_like_path", "missing_directory", "resolve_local"]


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


def download_command(model: str | None = None, adapter: str | None = None, revision: str | None = None) -> str:
    """The command line that fetches ``model`` / ``adapter`` (for the messages that name it)."""
    words = ["dmem-lsp", "download"]
    if model:
        words += ["--model", model]
    if adapter:
        words += ["--adapter", adapter]
    if revision:
        words += ["--revision", revision]
    return " ".join(words)


def resolve_local(name: str, what: str, flag: str, revision: str | None = None) -> str:
    """A directory as is; a hub id (at ``revision``) through the local cache (downloads allowed
    unless offline). ``what`` ("model" | "adapter") and ``flag`` (where the name came from) word
    the ``EngineError`` that says what to do when neither works."""
    directory = local_directory(name, revision)
    if directory is not None:
        return str(directory)
    if not is_hub_id(name, revision):
        raise EngineError(
            f"the {what} directory {name} {missing_directory(name)}: pass an existing directory or a Hugging Face id "
            f"with {flag}"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, revision=revision)
    except Exception as error:  # offline, not found, no permission: the same advice
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        at = f" at revision {revision!r}" if revision else ""
        fetch = download_command(**({"model": name} if what == "model" else {"adapter": name, "revision": revision}))
        raise EngineError(
            f"cannot find the {what} {name!r}{at}"
            + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
            + f": pass a local directory with {flag} PATH, or download it ahead of time with network access: "
            f"`{fetch}`. ({error})"
        ) from error
