"""What the quit tests share: an edit made just before the editor quits is on disk.

The server an editor starts is found through the lock it takes on its folder's memory (the
lock file carries its pid, written once the folder's memory is open: the server is ready).
The server's log (``--log-file``, ``-vv``) says when it has received the edit. Once the
editor has quit, the test waits for that process to end, then reads the folder's memory the
way ``dmem-lsp memory status`` does: the manifest's audit log names the edit, and the state
file, which passes its checksum, holds the tokens the audit log says were written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from unittest import mock

import numpy as np

from dmem_lsp.workspace.store import WorkspaceStore

T = TypeVar("T")

CHANGE_RECEIVED = "Notification 'textDocument/didChange' received"
"""What the server logs at ``-vv`` for each ``didChange`` it reads (pygls' line)."""


def memory_files(workspace: Path, data_home: Path) -> WorkspaceStore:
    """The memory files of ``workspace`` for a server whose ``XDG_DATA_HOME`` is ``data_home``."""
    with mock.patch.dict(os.environ, {"XDG_DATA_HOME": str(data_home)}):
        return WorkspaceStore(workspace)


def until(check: Callable[[], T], what: str, timeout: float, diagnose: Callable[[], str] = lambda: "") -> T:
    """Poll ``check`` until it returns a truthy value; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnose()}")
        time.sleep(0.05)
    return value


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which nobody reaped yet, has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lock_holder(files: WorkspaceStore) -> int | None:
    """The pid of the server that took ``files``' lock (it has loaded the model and opened the
    folder; it may have ended since), or None while no server has."""
    try:
        return int(files.lock_path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def server_pid(files: WorkspaceStore, timeout: float, diagnose: Callable[[], str] = lambda: "") -> int:
    """Wait for a server to open the folder's memory: its pid (see ``lock_holder``)."""
    return until(lambda: lock_holder(files), f"a server to open the memory of {files.root}", timeout, diagnose)


def changes_received(log: Path) -> int:
    """How many ``didChange`` notifications the server has read, from its ``-vv`` log."""
    try:
        return log.read_text(encoding="utf-8", errors="replace").count(CHANGE_RECEIVED)
    except FileNotFoundError:
        return 0


def wait_for_exit(pid: int, timeout: float, diagnose: Callable[[], str] = lambda: "") -> None:
    until(lambda: not running(pid), f"the server (pid {pid}) to exit once the editor quit", timeout, diagnose)


def assert_edit_saved(files: WorkspaceStore, source: str, edits: int = 1) -> None:
    """The folder's memory on disk holds ``edits`` edits to ``source``: the audit log names them,
    and the state file (checksum verified) holds the tokens written into the edits store."""
    manifest, problem = files.read_manifest(move_aside=False)
    assert problem is None, problem
    audit = manifest["audit"]
    written = [e for e in audit if e.get("store") == "edits" and e.get("kind") == "edit" and e.get("source") == source]
    assert len(written) == edits, f"the audit log names {len(written)} edits to {source}, not {edits}: {audit}"
    saved = files.read_saved(numpy=True)  # StoreError if the state fails its checksum
    tokens = sum(e["tokens"] for e in audit if e.get("store") == "edits" and "tokens" in e)
    assert tokens > 0 and saved.tokens.get("edits") == tokens, (saved.tokens, audit)
    assert np.count_nonzero(saved.states["edits"]), "the edits store on disk is empty"
