"""The files of one workspace folder's memory, and how they change safely.

``platformdirs.user_data_dir("dmem-lsp")/workspaces/<name>-<hash>/`` (0700, files 0600) holds

- ``state.safetensors``: every store's state, float32 ``[layers, heads, rank, rank]``, with
  the fingerprint (backbone, adapter sha256, δ-mem config), the tokens written per store and
  the sha256 of each convention file it holds in its metadata, and a ``checksum`` (sha256 of
  the tensors' names, shapes and bytes and of that metadata) verified on load. The state file
  alone says what memory holds: a source counts as learned only once a state holding it is
  saved, and a lost manifest loses no knowledge of it;
- ``manifest.json``: a readable copy of the above (root, fingerprint, tokens, sources) and the
  audit log of writes and skips. One that is not JSON or has fields of the wrong type is moved
  aside and rebuilt from the state file;
- ``adapters/<id>/``: the state and manifest of another adapter this folder was used with,
  kept while that adapter is not in use and put back when it is again;
- ``lock``: held (``filelock``: flock on Unix, a byte lock on Windows) by the server that
  owns the memory, with its pid in it; a second server opens the memory read-only.
  ``requests/``: resets and imports asked for from a terminal while a server holds the
  lock; that server carries them out.

Every file is replaced atomically (temp file, fsync, rename), so a crash leaves the old or
the new version; temp files a kill left behind are removed when the lock is taken. A state
file that is corrupt, fails its checksum or holds NaN/Inf is moved aside, never deleted.
The checksum finds damage and careless edits, not a forger who recomputes it (it is no
signature: the files are the user's own).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import filelock
import platformdirs

from dmem_lsp.runtime.fingerprint import Fingerprint, describe, differences, fingerprint_id

__all__ = [
    "AUDIT_LIMIT", "Saved", "StoreError", "checksum", "fingerprint_id", "read_file", "record_import", "record_reset",
    "WorkspaceStore", "memory_root", "workspace_dir", "state_sha256", "now",
]

FORMAT_VERSION = 2
"""2: sources and a checksum in the state file. 1 (no checksum) is still read, once, and
saved as 2; its sources come from the manifest."""
READABLE_VERSIONS = ("1", "2")
AUDIT_LIMIT = 1000
"""Audit entries kept in the manifest (the newest)."""
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class StoreError(RuntimeError):
    """A memory file that cannot be used, with a message a user can act on."""


def memory_root() -> Path:
    """Where per-workspace memory is kept."""
    return Path(platformdirs.user_data_dir("dmem-lsp")) / "workspaces"


def workspace_dir(root: Path) -> Path:
    resolved = root.expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", resolved.name)[:40] or "root"
    return memory_root() / f"{name}-{digest}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def state_sha256(tensor: Any) -> str:
    """The sha256 of a state's float32 bytes (what ``memory status`` and tests compare); a torch
    tensor or a numpy array (the terminal commands read states without torch)."""
    return hashlib.sha256(_float32(tensor).tobytes()).hexdigest()


def checksum(tensors: dict[str, Any], metadata: dict[str, str]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes and of ``metadata`` (less ``checksum``)."""
    digest = hashlib.sha256(b"dmem-lsp checksum 1\n")
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "checksum"}, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        dtype = str(tensor.dtype).removeprefix("torch.")  # the same name from torch and numpy
        digest.update(json.dumps([name, dtype, list(tensor.shape)]).encode())
        digest.update(_float32(tensor).tobytes())
    return digest.hexdigest()


def verify(tensors: dict[str, Any], metadata: dict[str, str], what: Path) -> None:
    """StoreError naming what failed: the checksum (data or metadata changed), or values that are not finite."""
    expected = metadata.get("checksum")
    if expected is None:
        raise StoreError(f"{what} carries no checksum")
    if checksum(tensors, metadata) != expected:
        raise StoreError(
            f"{what} fails its checksum: its tensors ({', '.join(sorted(tensors))}) or its metadata "
            f"({', '.join(sorted(k for k in metadata if k != 'checksum'))}) were changed or damaged"
        )
    finite(tensors, what)


def finite(tensors: dict[str, Any], what: Path) -> None:
    import numpy as np

    bad = [name for name, tensor in sorted(tensors.items()) if not bool(np.isfinite(_float32(tensor)).all())]
    if bad:
        raise StoreError(f"{what} holds NaN or Inf values in {', '.join(bad)}")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file (0600) in the same directory, fsync, then rename (as
    ``memory.adapter_io`` does; not imported from there, which would import torch)."""
    private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


@dataclass
class Saved:
    """What a state file holds."""

    states: dict[str, Any]
    fingerprint: Fingerprint
    tokens: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """{convention file: sha256 of the text written}."""
    version: str = str(FORMAT_VERSION)


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
        removed = []
        for folder in (self.dir, self.requests_dir, *self.kept_dir.glob("*")):
            for path in folder.glob(".*.tmp") if folder.is_dir() else ():
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    # -- files ----------------------------------------------------------------------------

    def move_aside(self, path: Path, why: str) -> Path:
        aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        os.replace(path, aside)
        return aside

    def read_manifest(self, move_aside: bool = True) -> tuple[dict[str, Any], str | None]:
        """(manifest, None), or (an empty manifest, what was wrong) when it is not JSON or has
        fields of the wrong type: then it is moved aside (unless ``move_aside`` is false)."""
        problem = None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            _check_manifest(manifest)
        except FileNotFoundError:
            manifest = {}
        except (OSError, ValueError) as error:
            where = "left in place"
            if move_aside:
                try:
                    where = f"kept as {self.move_aside(self.manifest_path, 'corrupt').name}"
                except OSError as move_error:
                    where = f"cannot be moved aside ({move_error})"
            problem = f"{self.manifest_path} is not a valid manifest ({error}); {where}, its audit log starts again"
            manifest = {}
        manifest.setdefault("format_version", FORMAT_VERSION)
        manifest["root"] = str(self.root)
        for key, empty in (("tokens", {}), ("sources", {}), ("audit", [])):
            manifest.setdefault(key, empty)
        return manifest, problem

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["audit"] = manifest["audit"][-AUDIT_LIMIT:]
        _atomic_write(self.manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())

    def read_saved(self, path: Path | None = None, numpy: bool = False) -> Saved:
        """What the state file holds, verified; StoreError naming what failed.
        ``numpy``: numpy arrays instead of torch tensors, without importing torch."""
        from safetensors import SafetensorError

        path = path or self.state_path
        try:
            tensors, metadata = read_file(path, numpy)
            version = metadata.get("format_version")
            if version not in READABLE_VERSIONS:
                raise StoreError(
                    f"{path} has no fingerprint of a format this dmem-lsp reads (format_version {version!r})"
                )
            if version != "1":
                verify(tensors, metadata, path)
            else:
                finite(tensors, path)
            fingerprint = json.loads(metadata.get("fingerprint", "null"))
            tokens = json.loads(metadata.get("tokens", "{}"))
            sources = json.loads(metadata.get("sources", "{}"))
        except (OSError, SafetensorError, ValueError) as error:
            raise StoreError(f"{path} cannot be read: {error}") from error
        if not isinstance(fingerprint, dict):
            raise StoreError(f"{path} has no fingerprint")
        if not _str_dict(tokens, int) or not _str_dict(sources, str):
            raise StoreError(f"{path} has token counts or sources of the wrong type")
        return Saved(tensors, cast(Fingerprint, fingerprint), tokens, sources, version)

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
        tensors = _as_float32(states)
        metadata = {
            "format_version": str(FORMAT_VERSION),
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "tokens": json.dumps({k: int(v) for k, v in tokens.items()}, sort_keys=True),
            "sources": json.dumps(dict(sources or {}), sort_keys=True),
        }
        metadata["checksum"] = checksum(tensors, metadata)
        _atomic_write(self.state_path, _serialize(tensors, metadata))

    # -- requests from a terminal ---------------------------------------------------------

    def add_request(self, request: dict[str, Any]) -> Path:
        path = self.requests_dir / f"{uuid.uuid4().hex}.json"
        _atomic_write(path, json.dumps(request).encode())
        return path

    def pending_requests(self) -> list[Path]:
        if not self.requests_dir.is_dir():
            return []
        return sorted(self.requests_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)


def _str_dict(value: Any, kind: type) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool) for k, v in value.items()
    )


def _check_manifest(manifest: Any) -> None:
    """ValueError naming the first field of the wrong type."""
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    if not _str_dict(manifest.get("tokens", {}), int):
        raise ValueError("tokens must map stores to counts")
    if not _str_dict(manifest.get("sources", {}), str):
        raise ValueError("sources must map files to sha256")
    audit = manifest.get("audit", [])
    if not isinstance(audit, list) or not all(isinstance(entry, dict) for entry in audit):
        raise ValueError("audit must be a list of entries")
    if not isinstance(manifest.get("format_version", FORMAT_VERSION), int):
        raise ValueError("format_version must be a number")


def record_reset(manifest: dict[str, Any], stores: list[str], source: str) -> None:
    """Note in the manifest that ``stores`` were zeroed (resetting conventions forgets their files)."""
    for store in stores:
        manifest["tokens"][store] = 0
        manifest["audit"].append({"time": now(), "store": store, "source": source, "kind": "reset"})
    if "conventions" in stores:
        manifest["sources"] = {}


def record_import(manifest: dict[str, Any], store: str, tokens: int, source: str) -> None:
    manifest["tokens"][store] = tokens
    manifest["audit"].append({"time": now(), "store": store, "source": source, "kind": "import", "tokens": tokens})
    if store == "conventions":
        manifest["sources"] = {}  # the files it holds are another folder's


def read_file(path: Path, numpy: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file (a state file or a snapshot), from one open of
    it: a save that replaces it meanwhile is never half mixed in. ``numpy``: numpy arrays,
    without importing torch. OSError, or SafetensorError when it is not a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = dict(f.metadata() or {})
    if not numpy:
        import torch

        tensors = {name: torch.from_numpy(array) for name, array in tensors.items()}
    return tensors, metadata


def _float32(tensor: Any) -> Any:
    """A contiguous float32 numpy array of a torch tensor or a numpy array."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor, dtype=np.float32)
    return tensor.detach().cpu().contiguous().float().numpy()


def _as_float32(tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` as contiguous float32, torch tensors staying torch and numpy arrays numpy."""
    import numpy as np

    return {
        name: _float32(t) if isinstance(t, np.ndarray) else t.detach().cpu().contiguous().float()
        for name, t in tensors.items()
    }


def _serialize(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of float32 ``tensors`` (torch tensors, or numpy arrays without importing torch)."""
    import numpy as np

    if all(isinstance(t, np.ndarray) for t in tensors.values()):
        from safetensors.numpy import save

        return save({name: _float32(t) for name, t in tensors.items()}, metadata=metadata)
    from safetensors.torch import save

    return save(_as_float32(tensors), metadata=metadata)
