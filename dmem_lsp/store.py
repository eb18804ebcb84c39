"""The files of one workspace folder's memory, and how they change safely.

``platformdirs.user_data_dir("dmem-lsp")/workspaces/<name>-<hash>/`` holds

- ``state.safetensors``: every store's state, float32 ``[layers, heads, rank, rank]``, with
  the fingerprint (backbone, adapter sha256, δ-mem config) and token counts in its metadata,
  so the file alone says what it belongs to;
- ``manifest.json``: the workspace root, the fingerprint, tokens written per store, the
  sha256 of each convention file last written, and an audit log of writes and skips;
- ``lock``: held (``flock``) by the server that owns the memory; a second server opens it
  read-only. ``requests/``: resets and imports asked for from a terminal while a server
  holds the lock; that server carries them out.

Every file is replaced atomically (temp file, fsync, rename), so a crash leaves the old or
the new version. A state file that is corrupt or belongs to another backbone or adapter is
moved aside, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import platformdirs

__all__ = [
    "AUDIT_LIMIT", "StoreError", "record_import", "record_reset", "WorkspaceStore", "memory_root", "workspace_dir", "state_sha256", "now",
]

FORMAT_VERSION = 1
AUDIT_LIMIT = 1000
"""Audit entries kept in the manifest (the newest)."""


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


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory, fsync, then rename (as
    ``memory.adapter_io`` does; not imported from there, which would import torch)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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


class WorkspaceStore:
    """The memory files of one workspace folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.dir = workspace_dir(self.root)
        self.state_path = self.dir / "state.safetensors"
        self.manifest_path = self.dir / "manifest.json"
        self.lock_path = self.dir / "lock"
        self.requests_dir = self.dir / "requests"
        self._lock_fd: int | None = None

    # -- the lock -------------------------------------------------------------------------

    def acquire(self) -> bool:
        """Take the lock without waiting; False when another process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.requests_dir.mkdir(exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except ImportError:  # no flock (Windows): one server per folder is up to the user
            pass
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return True

    def holder(self) -> str:
        try:
            return f"pid {self.lock_path.read_text().strip()}"
        except OSError:
            return "another process"

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    # -- files ----------------------------------------------------------------------------

    def move_aside(self, path: Path, why: str) -> Path:
        aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
        os.replace(path, aside)
        return aside

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            manifest = {}
        except (OSError, ValueError):
            self.move_aside(self.manifest_path, "corrupt")
            manifest = {}
        manifest.setdefault("format_version", FORMAT_VERSION)
        manifest["root"] = str(self.root)
        manifest.setdefault("tokens", {})
        manifest.setdefault("sources", {})
        manifest.setdefault("audit", [])
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["audit"] = manifest["audit"][-AUDIT_LIMIT:]
        _atomic_write(self.manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())

    def read_states(self, numpy: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
        """(states, fingerprint) from the state file; StoreError when it cannot be read.
        ``numpy``: numpy arrays instead of torch tensors, without importing torch."""
        from safetensors import SafetensorError

        load = _loader(numpy)

        try:
            data = self.state_path.read_bytes()
            tensors = load(data)
            metadata = _metadata(data)
            fingerprint = json.loads(metadata.get("fingerprint", "null"))
        except (OSError, SafetensorError, ValueError) as error:
            raise StoreError(f"{self.state_path} cannot be read: {error}") from error
        if not isinstance(fingerprint, dict) or metadata.get("format_version") != str(FORMAT_VERSION):
            raise StoreError(f"{self.state_path} has no fingerprint of this format")
        return tensors, fingerprint

    def load_states(
        self, fingerprint: dict[str, Any], move_aside: bool = True
    ) -> tuple[dict[str, Any] | None, str | None]:
        """(states, None); (None, None) when there are none yet; (None, what happened) when
        the file was corrupt or made for another backbone or adapter (then it is moved aside,
        unless ``move_aside`` is false: a read-only opener leaves the owner's files alone)."""
        if not self.state_path.exists():
            return None, None

        def aside(why: str) -> str:
            return f"kept as {self.move_aside(self.state_path, why).name}" if move_aside else "left in place"

        try:
            states, theirs = self.read_states()
        except StoreError as error:
            return None, f"{error}; {aside('corrupt')}, memory starts empty"
        differ = [key for key in ("backbone", "adapter_sha256", "config") if theirs.get(key) != fingerprint.get(key)]
        if differ:
            return None, (
                f"the saved memory of {self.root} was made with another {', '.join(differ)} "
                f"({theirs.get('backbone', {}).get('id')} / adapter {str(theirs.get('adapter_sha256'))[:12]}); "
                f"{aside('other-adapter')}, memory starts empty"
            )
        return states, None

    def save_states(self, states: dict[str, Any], fingerprint: dict[str, Any], tokens: dict[str, int]) -> None:
        metadata = {
            "format_version": str(FORMAT_VERSION),
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
            "tokens": json.dumps(tokens, sort_keys=True),
        }
        _atomic_write(self.state_path, _serialize(states, metadata))

    # -- requests from a terminal ---------------------------------------------------------

    def add_request(self, request: dict[str, Any]) -> Path:
        self.requests_dir.mkdir(parents=True, exist_ok=True)
        path = self.requests_dir / f"{uuid.uuid4().hex}.json"
        _atomic_write(path, json.dumps(request).encode())
        return path

    def pending_requests(self) -> list[Path]:
        if not self.requests_dir.is_dir():
            return []
        return sorted(self.requests_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns)


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


def _metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in ``data``."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return header.get("__metadata__") or {}


def _float32(tensor: Any) -> Any:
    """A contiguous float32 numpy array of a torch tensor or a numpy array."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor, dtype=np.float32)
    return tensor.detach().contiguous().float().cpu().numpy()


def _loader(numpy: bool):
    if numpy:
        from safetensors.numpy import load
    else:
        from safetensors.torch import load
    return load


def _serialize(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """safetensors bytes of float32 ``tensors`` (torch tensors, or numpy arrays without importing torch)."""
    import numpy as np

    if all(isinstance(t, np.ndarray) for t in tensors.values()):
        from safetensors.numpy import save

        return save({name: _float32(t) for name, t in tensors.items()}, metadata=metadata)
    from safetensors.torch import save

    return save({name: t.contiguous().float() for name, t in tensors.items()}, metadata=metadata)
