"""The open workspace folders: one ``WorkspaceMemory`` each, and which folder holds a document.

A ``WorkspaceMemory`` is one folder's memory in the running server: its states (float32, on
the CPU), its files (``store.WorkspaceStore``), its write policy and its adapter.
``open_files`` takes the folder's lock and loads what was saved; ``Folders`` is the registry
the server looks documents up in (the innermost folder holding a uri), with the folders that
got no memory and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pygls.uris import to_fs_path

from dmem_lsp.workspace.config import WorkspaceConfig
from dmem_lsp.workspace.policy import Policy
from dmem_lsp.workspace.store import WorkspaceStore

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine, LoadedAdapter
    from dmem_lsp.runtime.fingerprint import Fingerprint
    from dmem_lsp.runtime.settings import MemorySettings

__all__ = ["Folders", "WorkspaceMemory", "open_files", "path_of", "why"]

log = logging.getLogger(__name__)


def path_of(uri: str | None) -> Path | None:
    """The resolved path of a ``file:`` uri; None for any other."""
    if not uri or not uri.startswith("file:"):
        return None
    return Path(to_fs_path(uri) or "").resolve()


def why(error: OSError) -> str:
    """An OSError as a user reads it: "Read-only file system", "No space left on device"."""
    return (error.strerror or str(error)) if isinstance(error, OSError) else str(error)


class WorkspaceMemory:
    """One workspace folder's memory: states, files, policy, adapter and editor snapshots."""

    def __init__(
        self, root: Path, config: WorkspaceConfig, adapter: LoadedAdapter, user: Callable[[], MemorySettings]
    ) -> None:
        self.root = root.resolve()
        self.uri = self.root.as_uri()
        self.config = config
        """The folder's ``.dmem/config.toml`` (empty when it has none)."""
        self.adapter = adapter
        """The adapter this folder's states are written and read with."""
        self._user = user
        self.files = WorkspaceStore(self.root)
        self.policy = Policy(self.root, self.settings.max_file_bytes, config.ignore, config.conventions)
        self.states: dict[str, Any] = {}
        """{store: float32 [layers, heads, rank, rank]}; replaced (never changed in place) by worker jobs."""
        self.version = 0
        """Bumped whenever ``states`` change other than by a write in the model."""
        self.manifest: dict[str, Any] = {}
        self.read_only = False
        self.read_only_reason = ""
        """Why nothing is written or saved here (another server holds the lock, the directory cannot be written)."""
        self.unsaved: str | None = None
        """Why the last save failed (None: it did not); the user has been told."""
        self.epochs: dict[str, int] = {}
        """Per store, bumped by resets and imports (worker only): a write begun before stops."""
        self.snapshots: dict[str, str] = {}
        """Text per open document as of its last write (edits are diffs against it)."""
        self.save_lock = asyncio.Lock()
        """Held while the files are written, and across a reset or import and its save."""
        self.watches: list[Any] = []

    @property
    def settings(self) -> MemorySettings:
        """The editor's memory settings with the folder's config laid over them."""
        return self.config.memory_settings(self._user())

    @property
    def fingerprint(self) -> Fingerprint:
        return self.adapter.fingerprint

    def holds(self, uri: str) -> bool:
        """Whether the document ``uri`` is in this folder (or in a folder inside it)."""
        path = path_of(uri)
        return path is not None and (path == self.root or self.root in path.parents)

    def relative(self, path: Path) -> str:
        """The name of ``path`` in the folder, as the folder lists it (a link by its own name, not its target's)."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            relative = self.policy.relative(path)
            return str(relative) if relative is not None else str(path)


class Folders:
    """The open folders by root, the documents waiting for theirs, and the folders refused."""

    def __init__(self) -> None:
        self.open: dict[Path, WorkspaceMemory] = {}
        self.baselines: dict[str, str] = {}
        """Text of documents opened before their folder's memory was (the model was loading)."""
        self.refused: dict[Path, str] = {}
        """Folders that got no memory, and why (their config or adapter cannot be used)."""

    def folder_for(self, uri: str | None) -> WorkspaceMemory | None:
        """The folder holding ``uri`` (the innermost one), or None: outside every folder."""
        path = path_of(uri)
        if path is None:
            return None
        best = None
        for root, memory in self.open.items():
            if (path == root or root in path.parents) and (best is None or len(root.parts) > len(best.root.parts)):
                best = memory
        return best

    def is_open(self, memory: WorkspaceMemory) -> bool:
        """Whether ``memory`` is still the open memory of its folder (not closed or reopened)."""
        return self.open.get(memory.root) is memory

    def no_memory_reason(self, uri: str | None) -> str:
        """Why a document (or the editor, ``uri`` None) has no memory to write into."""
        if not uri:
            for root, reason in self.refused.items():
                return f"no memory for {root}: {reason}"
            return "no workspace folder is open (memory is kept per folder)"
        if not uri.startswith("file:"):
            return f"{uri} is not a file in a workspace folder: it uses no memory"
        path = Path(to_fs_path(uri) or "").resolve()
        for root, reason in self.refused.items():
            if path == root or root in path.parents:
                return f"no memory for {root}: {reason}"
        return f"{uri} is outside every workspace folder: documents there use no memory"


def open_files(memory: WorkspaceMemory, engine: Engine) -> list[str]:
    """Take the folder's lock, clean up after kills, load the state and manifest; what was wrong."""
    import torch

    files = memory.files
    try:
        if not files.acquire():
            memory.read_only, memory.read_only_reason = True, f"in use by another dmem-lsp ({files.holder()})"
    except OSError as error:
        memory.read_only, memory.read_only_reason = True, f"in {files.dir}, which cannot be written ({why(error)})"
    if not memory.read_only:
        removed = files.clean_temporary_files()
        if removed:
            log.info("%s: removed %d temporary files of interrupted saves", files.dir, len(removed))
    try:
        saved, notes = files.open_states(memory.fingerprint, move_aside=not memory.read_only)
    except OSError as error:  # the directory cannot be written: the bad file stays
        saved, notes = (
            None,
            [f"the saved memory of {memory.root} cannot be used and cannot be moved aside ({why(error)})"],
        )
    manifest, problem = files.read_manifest(move_aside=not memory.read_only)
    if problem:
        notes.append(f"{problem}; what memory holds is read from the state file")
    config = engine.memory.config
    shape = (len(engine.memory.layers), config.state_heads, config.rank, config.rank)
    if saved is not None and (
        set(saved.states) != set(engine.memory.stores) or any(tuple(t.shape) != shape for t in saved.states.values())
    ):
        notes.append(
            f"{files.state_path} holds stores {', '.join(sorted(saved.states))} of another shape than "
            f"{', '.join(engine.memory.stores)} {list(shape)}; memory starts empty"
        )
        saved = None
    if saved is None:
        memory.states = {store: torch.zeros(shape) for store in engine.memory.stores}
        manifest.update(tokens={}, sources={})  # nothing saved: nothing is held
    else:
        memory.states = saved.states
        manifest["tokens"] = dict(saved.tokens)
        if saved.version != "1":  # older states kept their sources in the manifest only
            manifest["sources"] = dict(saved.sources)
    manifest.update(memory.fingerprint)
    memory.manifest = manifest
    return notes
