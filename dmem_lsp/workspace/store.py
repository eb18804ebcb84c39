"""The memory files of one workspace folder (``WorkspaceStore``): who owns them, and opening and saving its state.

``files.workspace_dir(root)`` (0700, files 0600) holds

- ``state.safetensors``: every store's state, with its fingerprint, tokens, sources and
  checksum (``state_file``). It alone says what memory holds;
- ``manifest.json``: a readable copy of that and the audit log (``manifest``);
- ``adapters/<id>/``: the state and manifest of another adapter this folder was used with,
  kept while that adapter is not in use and put back when it is again;
- ``lock``: held (``filelock``: flock on Unix, a byte lock on Windows) by the server that
  owns the memory, with its pid in it; a second server opens the memory read-only.
  ``requests/``: resets and imports asked for from a terminal while a server holds the
  lock; that server carries them out.

Every file is replaced atomically and temp files a kill left behind are removed when the lock
is taken (``files``). A state file that is corrupt, fails its checksum or holds NaN/Inf is
moved aside, never deleted; so is one of another fingerprint, kept under ``adapters/``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import filelock

from dmem_lsp.runtime.fingerprint import Fingerprint, describe, differences, fingerprint_id
from dmem_lsp.workspace import files, manifest, state_file
from dmem_lsp.workspace.files import PRIVATE_FILE, StoreError, atomic_write, private_dirs, workspace_dir
from dmem_lsp.workspace.state_file import Saved

__all__ = ["WorkspaceStore"]


class WorkspaceStore:
    """The memory files of one workspace folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.dir = workspace_dir(self.root)
        self.state_path = self.dir / "state.safetensors"
        self.manifest_path = self.dir / "manifest.json"
        self.lock_path = self.dir / "lock"
        self.requests_dir = self.dir / "requests"
        self.kept_dir = self.dir / "adapters"
        self._lock: filelock.BaseFileLock | None = None

    # -- the lock -------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it. OSError when
        the memory directory cannot be created or written."""
        private_dirs(self.requests_dir)
        # thread_local=False: the server takes it on one thread and may release it on another
        lock = filelock.FileLock(self.lock_path, timeout=0, mode=PRIVATE_FILE, thread_local=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            return False
        try:  # the holder's pid, for ``holder`` (filelock leaves the file's content alone)
            self.lock_path.chmod(PRIVATE_FILE)
            fd = os.open(self.lock_path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)  # a second descriptor: closing it keeps the lock
        except OSError:
            pass  # a full disk: the lock holds all the same
        self._lock = lock
        return True

    def holder(self) -> str:
        try:
            return f"pid {self.lock_path.read_text().strip()}"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def clean_temporary_files(self) -> list[str]:
        """Remove the temp files of saves a kill interrupted (only while holding the lock)."""
        return files.clean_temporary_files([self.dir, self.requests_dir, *self.kept_dir.glob("*")])

    # -- files ----------------------------------------------------------------------------

    def move_aside(self, path: Path, why: str) -> Path:
        return files.move_aside(path, why)

    def read_manifest(self, move_aside: bool = True) -> tuple[dict[str, Any], str | None]:
        """``manifest.read_manifest`` of this folder's manifest."""
        return manifest.read_manifest(self.manifest_path, self.root, move_aside)

    def write_manifest(self, contents: dict[str, Any]) -> None:
        manifest.write_manifest(self.manifest_path, contents)

    def read_saved(self, path: Path | None = None, numpy: bool = False) -> Saved:
        """What the state file holds, checked (``state_file.read_saved``); StoreError naming what failed.
        ``numpy``: numpy arrays instead of torch tensors, without importing torch."""
        return state_file.read_saved(path or self.state_path, numpy)

    def read_states(self, numpy: bool = False) -> tuple[dict[str, Any], Fingerprint]:
        """(states, fingerprint) from the state file; StoreError when it cannot be read."""
        saved = self.read_saved(numpy=numpy)
        return saved.states, saved.fingerprint

    def open_states(self, fingerprint: Fingerprint, move_aside: bool = True) -> tuple[Saved | None, list[str]]:
        """The state saved for ``fingerprint`` (None: none yet) and what happened on the way.

        A state made with another backbone, adapter or config is kept under ``adapters/`` (with
        its manifest) and the one kept for ``fingerprint``, if any, is put back. A state that
        cannot be used (damaged, tampered, NaN) is moved aside. With ``move_aside`` false (a
        read-only opener) nothing is moved: the owner's files are left alone.
        """
        notes: list[str] = []
        if self.state_path.exists():
            try:
                saved = self.read_saved()
            except StoreError as error:
                if not move_aside:
                    return None, [f"{error}; left in place"]
                notes.append(f"{error}; kept as {self.move_aside(self.state_path, 'corrupt').name}")
            else:
                differ = differences(saved.fingerprint, fingerprint, legacy=saved.version == "1")
                if not differ:
                    return saved, notes
                if not move_aside:
                    return None, [
                        f"the saved memory of {self.root} was made with another {', '.join(differ)}; left in place"
                    ]
                kept = self._keep(saved.fingerprint)
                notes.append(
                    f"the saved memory of {self.root} was made with another {', '.join(differ)} "
                    f"({describe(saved.fingerprint)}); "
                    f"kept in {kept.relative_to(self.dir)} for when that adapter is used again"
                )
        mine = self.kept_dir / fingerprint_id(fingerprint)
        if not move_aside or not (mine / self.state_path.name).exists():
            if notes:
                notes[-1] += ", memory starts empty"
            return None, notes
        try:
            saved = self.read_saved(mine / self.state_path.name)
        except StoreError as error:
            return None, [*notes, f"the memory kept for this adapter is not usable: {error}; left in {mine.name}"]
        if differences(saved.fingerprint, fingerprint, legacy=saved.version == "1"):
            return None, notes
        for name in (self.manifest_path.name, self.state_path.name):  # the state last: it is what counts
            if (mine / name).exists():
                os.replace(mine / name, self.dir / name)
        mine.rmdir() if not any(mine.iterdir()) else None
        notes.append(f"restored the memory of {self.root} kept for this adapter ({sum(saved.tokens.values())} tokens)")
        return saved, notes

    def _keep(self, theirs: Fingerprint) -> Path:
        """Move the state (and manifest) of another fingerprint to ``adapters/<id>/``."""
        kept = self.kept_dir / fingerprint_id(theirs)
        private_dirs(kept)
        if (kept / self.state_path.name).exists():
            self.move_aside(kept / self.state_path.name, "replaced")
        os.replace(self.state_path, kept / self.state_path.name)
        if self.manifest_path.exists():
            os.replace(self.manifest_path, kept / self.manifest_path.name)
        return kept

    def load_states(
        self, fingerprint: Fingerprint, move_aside: bool = True
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(states, None); (None, None) when there are none yet; (None, what happened) otherwise."""
        saved, notes = self.open_states(fingerprint, move_aside)
        if saved is not None:
            return saved.states, None
        return None, "; ".join(notes) or None

    def save_states(
        self,
        states: dict[str, Any],
        fingerprint: Fingerprint,
        tokens: dict[str, int],
        sources: dict[str, str] | None = None,
    ) -> None:
        state_file.save_states(self.state_path, states, fingerprint, tokens, sources or {})

    # -- requests from a terminal ---------------------------------------------------------

    def add_request(self, request: dict[str, Any]) -> Path:
        path = self.requests_dir / f"{uuid.uuid4().hex}.json"
        atomic_write(path, json.dumps(request).encode())
        return path

    def pending_requests(self) -> list[Path]:
        if not self.requests_dir.is_dir():
            return []
        return sorted(self.requests_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
