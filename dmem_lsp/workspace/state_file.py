"""The safetensors files memory is kept in (state files and store snapshots): one reader, one writer.

A state file holds every store's state, float32 ``[layers, heads, rank, rank]``, and in its
metadata the fingerprint (backbone, adapter sha256, δ-mem config), the tokens written per store,
the sha256 of each convention file it holds, and a ``checksum``: the sha256 of the tensors'
names, dtypes, shapes and bytes and of that metadata. A snapshot (``snapshots``) is the same kind
of file with one tensor. The state file alone says what memory holds: a source counts as learned
only once a state holding it is saved.

``read_checked`` is the only reader of either: one open of the file (a save that replaces it
meanwhile is never half mixed in), then the same checks for both, each failure a ``StoreError``
naming it: ``cannot be read`` (not a safetensors file, truncated, of another kind),
``carries no checksum``, ``fails its checksum`` (data or metadata changed or damaged),
``NaN or Inf values``, ``not float32``. The checksum finds damage and careless edits, not a
forger who recomputes it (it is no signature: the files are the user's own).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from dmem_lsp.runtime.fingerprint import Fingerprint
from dmem_lsp.workspace.files import StoreError, atomic_write

__all__ = [
    "FORMAT_VERSION", "Saved", "checksum", "read_checked", "read_file", "read_saved", "save_states",
    "state_sha256", "str_dict", "write_checked",
]

FORMAT_VERSION = 2
"""2: sources and a checksum in the state file. 1 (no checksum) is still read, once, and
saved as 2; its sources come from the manifest."""
READABLE_VERSIONS = ("1", "2")


@dataclass
class Saved:
    """What a state file holds."""

    states: dict[str, Any]
    fingerprint: Fingerprint
    tokens: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """{convention file: sha256 of the text written}."""
    version: str = str(FORMAT_VERSION)


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
        digest.update(json.dumps([name, _dtype(tensor), list(tensor.shape)]).encode())
        digest.update(_float32(tensor).tobytes())
    return digest.hexdigest()


def read_file(path: Path, numpy: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file as it is, unchecked (``read_checked`` checks it),
    from one open of it. ``numpy``: numpy arrays, without importing torch. OSError, or
    SafetensorError when it is not a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = dict(f.metadata() or {})
    if not numpy:
        import torch

        tensors = {name: torch.from_numpy(array) for name, array in tensors.items()}
    return tensors, metadata


def read_checked(
    path: Path, numpy: bool = False, identify: Callable[[dict[str, str]], bool] = lambda metadata: True
) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a state file or snapshot, checked; StoreError naming what failed.

    ``identify(metadata)`` raises ValueError when the file is not of the kind the caller reads,
    and says whether it must carry a checksum (False only for a state file of format 1, whose
    values are still checked).
    """
    from safetensors import SafetensorError

    try:
        tensors, metadata = read_file(path, numpy)
        checked = identify(metadata)
    except (OSError, SafetensorError, ValueError) as error:
        raise StoreError(f"{path} cannot be read: {error}") from error
    if checked:
        expected = metadata.get("checksum")
        if expected is None:
            raise StoreError(f"{path} carries no checksum")
        if checksum(tensors, metadata) != expected:
            raise StoreError(
                f"{path} fails its checksum: its tensors ({', '.join(sorted(tensors))}) or its metadata "
                f"({', '.join(sorted(k for k in metadata if k != 'checksum'))}) were changed or damaged"
            )
    _finite(tensors, path)
    other = [f"{name} ({_dtype(tensor)})" for name, tensor in sorted(tensors.items()) if _dtype(tensor) != "float32"]
    if other:
        raise StoreError(f"{path} holds tensors that are not float32: {', '.join(other)}")
    return tensors, metadata


def write_checked(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``tensors`` as float32 with ``metadata`` and its ``checksum``, atomically (``files.atomic_write``)."""
    tensors = _as_float32(tensors)
    metadata = {**metadata, "checksum": checksum(tensors, metadata)}
    atomic_write(path, _serialize(tensors, metadata))


def read_saved(path: Path, numpy: bool = False) -> Saved:
    """What the state file at ``path`` holds, checked (``read_checked``); StoreError naming what failed.
    ``numpy``: numpy arrays instead of torch tensors, without importing torch."""

    def identify(metadata: dict[str, str]) -> bool:
        version = metadata.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"it has no fingerprint of a format this dmem-lsp reads (format_version {version!r})")
        return version != "1"

    tensors, metadata = read_checked(path, numpy, identify)
    try:
        fingerprint = json.loads(metadata.get("fingerprint", "null"))
        tokens = json.loads(metadata.get("tokens", "{}"))
        sources = json.loads(metadata.get("sources", "{}"))
    except ValueError as error:
        raise StoreError(f"{path} cannot be read: {error}") from error
    if not isinstance(fingerprint, dict):
        raise StoreError(f"{path} has no fingerprint")
    if not str_dict(tokens, int) or not str_dict(sources, str):
        raise StoreError(f"{path} has token counts or sources of the wrong type")
    return Saved(tensors, cast(Fingerprint, fingerprint), tokens, sources, metadata["format_version"])


def save_states(
    path: Path, states: dict[str, Any], fingerprint: Fingerprint, tokens: dict[str, int], sources: dict[str, str]
) -> None:
    """Write a state file of the current format (``read_saved`` reads it)."""
    metadata = {
        "format_version": str(FORMAT_VERSION),
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "tokens": json.dumps({k: int(v) for k, v in tokens.items()}, sort_keys=True),
        "sources": json.dumps(dict(sources), sort_keys=True),
    }
    write_checked(path, states, metadata)


def str_dict(value: Any, kind: type) -> bool:
    """``value`` is a dict of str to ``kind`` (bool is no int here)."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, kind) and not isinstance(v, bool) for k, v in value.items()
    )


def _finite(tensors: dict[str, Any], what: Path) -> None:
    import numpy as np

    bad = [name for name, tensor in sorted(tensors.items()) if not bool(np.isfinite(_float32(tensor)).all())]
    if bad:
        raise StoreError(f"{what} holds NaN or Inf values in {', '.join(bad)}")


def _dtype(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")  # the same name from torch and numpy


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
    from safetensors.torch import save as save_torch

    return save_torch(_as_float32(tensors), metadata=metadata)
