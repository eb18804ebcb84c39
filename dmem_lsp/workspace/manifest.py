"""``manifest.json``: the readable copy of what a workspace's memory holds, and its audit log.

It holds the workspace root, the fingerprint, the tokens written per store, the convention files
learned (``{path: sha256}``) and the audit log of writes, skips, resets and imports (the newest
``AUDIT_LIMIT`` entries). The state file, not the manifest, says what memory holds: a manifest
that is not JSON or has fields of the wrong type is moved aside and rebuilt from the state
file, and only its audit log is lost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dmem_lsp.workspace.files import atomic_write, move_aside
from dmem_lsp.workspace.state_file import FORMAT_VERSION, str_dict

__all__ = ["AUDIT_LIMIT", "now", "read_manifest", "record_import", "record_reset", "write_manifest"]

AUDIT_LIMIT = 1000
"""Audit entries kept in the manifest (the newest)."""


def now() -> str:
    """The time of an audit entry."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def read_manifest(path: Path, root: Path, move_aside_bad: bool = True) -> tuple[dict[str, Any], str | None]:
    """(manifest, None), or (an empty manifest, what was wrong) when it is not JSON or has
    fields of the wrong type: then it is moved aside (unless ``move_aside_bad`` is false).
    Every field is filled in (``root`` is always ``root``)."""
    problem = None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        _check(manifest)
    except FileNotFoundError:
        manifest = {}
    except (OSError, ValueError) as error:
        where = "left in place"
        if move_aside_bad:
            try:
                where = f"kept as {move_aside(path, 'corrupt').name}"
            except OSError as move_error:
                where = f"cannot be moved aside ({move_error})"
        problem = f"{path} is not a valid manifest ({error}); {where}, its audit log starts again"
        manifest = {}
    manifest.setdefault("format_version", FORMAT_VERSION)
    manifest["root"] = str(root)
    for key, empty in (("tokens", {}), ("sources", {}), ("audit", [])):
        manifest.setdefault(key, empty)
    return manifest, problem


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` atomically, its audit log cut to the newest ``AUDIT_LIMIT`` entries."""
    manifest["audit"] = manifest["audit"][-AUDIT_LIMIT:]
    atomic_write(path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def record_reset(manifest: dict[str, Any], stores: list[str], source: str) -> None:
    """Note in the manifest that ``stores`` were zeroed (resetting conventions forgets their files)."""
    for store in stores:
        manifest["tokens"][store] = 0
        manifest["audit"].append({"time": now(), "store": store, "source": source, "kind": "reset"})
    if "conventions" in stores:
        manifest["sources"] = {}


def record_import(manifest: dict[str, Any], store: str, tokens: int, source: str) -> None:
    """Note in the manifest that ``store`` was replaced by a snapshot of ``tokens`` tokens."""
    manifest["tokens"][store] = tokens
    manifest["audit"].append({"time": now(), "store": store, "source": source, "kind": "import", "tokens": tokens})
    if store == "conventions":
        manifest["sources"] = {}  # the files it holds are another folder's


def _check(manifest: Any) -> None:
    """ValueError naming the first field of the wrong type."""
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    if not str_dict(manifest.get("tokens", {}), int):
        raise ValueError("tokens must map stores to counts")
    if not str_dict(manifest.get("sources", {}), str):
        raise ValueError("sources must map files to sha256")
    audit = manifest.get("audit", [])
    if not isinstance(audit, list) or not all(isinstance(entry, dict) for entry in audit):
        raise ValueError("audit must be a list of entries")
    if not isinstance(manifest.get("format_version", FORMAT_VERSION), int):
        raise ValueError("format_version must be a number")
