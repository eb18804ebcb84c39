"""Reset, import and status of a memory, written once for the server and the terminal.

The running server (``commands.Commands``, torch tensors on the worker) and the terminal
commands (``dmem_lsp.cli.memory``, numpy arrays, no torch) both change a memory's states
through these functions and describe it with ``stores_status``: which stores a reset may
name and what it zeroes, what an import checks, and what status reports are decided here
(``manifest.record_reset``/``record_import`` write them into the manifest). Torch-free:
``zeros_like`` is the caller's (``torch.zeros_like`` or ``numpy.zeros_like``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from dmem_lsp.workspace.files import StoreError
from dmem_lsp.workspace.state_file import state_sha256

__all__ = ["check_import", "skipped", "stores_status", "unknown_stores", "zeroed"]

T = TypeVar("T")


def unknown_stores(states: dict[str, Any], stores: Iterable[str]) -> list[str]:
    """The names in ``stores`` that are no store of ``states``, sorted."""
    return sorted(set(stores) - set(states))


def zeroed(states: dict[str, T], stores: list[str], zeros_like: Callable[[T], T]) -> dict[str, T]:
    """``states`` with ``stores`` zeroed, as a new dict (record it with ``manifest.record_reset``)."""
    result = dict(states)
    for store in stores:
        result[store] = zeros_like(states[store])
    return result


def check_import(states: dict[str, Any], snapshot: Path, store: str, tensor: Any) -> None:
    """StoreError unless this memory has ``store`` with the shape of the snapshot's ``tensor``
    (the caller replaces it and records it with ``manifest.record_import``)."""
    if store not in states or tuple(states[store].shape) != tuple(tensor.shape):
        raise StoreError(f"{snapshot} holds store {store!r} of another shape; not imported")


def stores_status(manifest: dict[str, Any], states: dict[str, Any], last: int) -> dict[str, dict[str, Any]]:
    """Per store (those of ``states``, else those the manifest counts tokens for): ``tokens``,
    ``sha256`` of its state (None when there is none) and its ``last`` writes (``lastWrites``)."""
    audit = manifest.get("audit", [])
    tokens = manifest.get("tokens", {})
    return {
        store: {
            "tokens": tokens.get(store, 0),
            "sha256": state_sha256(states[store]) if store in states else None,
            "lastWrites": [entry for entry in audit if entry.get("store") == store][-last:],
        }
        for store in (states or tokens)
    }


def skipped(manifest: dict[str, Any], last: int) -> list[dict[str, Any]]:
    """The last ``last`` things memory did not write, and why (audit entries with ``skipped``)."""
    return [entry for entry in manifest.get("audit", []) if "skipped" in entry][-last:]
