"""Workspace memory from a terminal: ``--reset-memory``, ``memory status|export|import``.

``memory status`` prints the page the editors show (``workspace/status_page``), Markdown.

These work whether or not a server is running. Without one, the command takes the
folder's lock and changes the files itself. With one (the lock is held), it leaves a
request in the memory's ``requests/`` folder; the server carries it out at once (it
watches that folder), writes the outcome next to it, and the command prints it.

States are read and written as numpy arrays (safetensors' numpy API): these commands never
import torch, so they answer in well under a second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from dmem_lsp.workspace import operations
from dmem_lsp.workspace.files import StoreError
from dmem_lsp.workspace.manifest import record_import, record_reset
from dmem_lsp.workspace.state_file import Saved
from dmem_lsp.workspace.status_page import folder_status, status_markdown
from dmem_lsp.workspace.store import WorkspaceStore

__all__ = ["reset_memory", "memory_status", "export_store", "import_store"]

WAIT_SECONDS = 60


def _ask_server(files: WorkspaceStore, request: dict) -> int:
    path = files.add_request(request)
    done = path.with_suffix(".done")
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if done.exists():
            result = json.loads(done.read_text(encoding="utf-8"))
            done.unlink(missing_ok=True)
            print(result["message"], file=sys.stdout if result["ok"] else sys.stderr)
            return 0 if result["ok"] else 1
        time.sleep(0.05)
    path.unlink(missing_ok=True)
    print(
        f"the dmem-lsp that holds this memory ({files.holder()}) did not answer within {WAIT_SECONDS} s; "
        "stop it and run the command again",
        file=sys.stderr,
    )
    return 1


def _no_memory(files: WorkspaceStore) -> int:
    print(f"{files.root} has no memory yet ({files.dir})", file=sys.stderr)
    return 1


def reset_memory(workspace: Path, store: str | None) -> int:
    files = WorkspaceStore(workspace)
    if not files.dir.is_dir():
        return _no_memory(files)
    if not files.acquire():
        return _ask_server(files, {"action": "reset", "stores": [store] if store else []})
    try:
        if not files.state_path.exists():
            print(f"{files.root}: memory is empty already")
            return 0
        files.clean_temporary_files()
        saved = files.read_saved(numpy=True)
        states = saved.states
        stores = [store] if store else list(states)
        unknown = operations.unknown_stores(states, stores)
        if unknown:
            print(f"no store {', '.join(unknown)}; the stores are {', '.join(states)}", file=sys.stderr)
            return 2
        manifest, _ = files.read_manifest()
        manifest.update(tokens=saved.tokens, sources=saved.sources)  # the state file says what memory holds
        states = operations.zeroed(states, stores, np.zeros_like)
        record_reset(manifest, stores, "dmem-lsp --reset-memory")
        files.save_states(states, saved.fingerprint, manifest["tokens"], manifest["sources"])
        files.write_manifest(manifest)
        print(f"{files.root}: reset {', '.join(stores)}")
        return 0
    except StoreError as error:
        print(f"{error}", file=sys.stderr)
        return 1
    finally:
        files.release()


def memory_status(workspace: Path) -> int:
    """The status page the editors show (``status_page``), from the files, with who holds them."""
    files = WorkspaceStore(workspace)
    if not files.dir.is_dir():
        return _no_memory(files)
    manifest, problem = files.read_manifest(move_aside=False)
    problems = [f"manifest: {problem}"] if problem else []
    server = "not running" if files.acquire() else f"running: {files.holder()}"
    files.release()
    states = {}
    if files.state_path.exists():
        try:
            saved = files.read_saved(numpy=True)
            states = saved.states
            manifest.update(tokens=saved.tokens)
        except StoreError as error:
            problems.append(f"state unreadable: {error}")
    status = folder_status(files, manifest, states, files.root.as_uri(), server=server, problems=problems)
    print(status_markdown([status]), end="")
    return 0


def export_store(workspace: Path, store: str, output: Path) -> int:
    from dmem_lsp.workspace.snapshots import write_snapshot

    files = WorkspaceStore(workspace)
    if not files.state_path.exists():
        return _no_memory(files)
    try:
        saved = files.read_saved(numpy=True)
    except StoreError as error:
        print(error, file=sys.stderr)
        return 1
    if store not in saved.states:
        print(f"no store {store!r}; the stores are {', '.join(saved.states)}", file=sys.stderr)
        return 2
    tokens = saved.tokens.get(store, 0)
    write_snapshot(output, store, saved.states[store], saved.fingerprint, tokens)
    print(f"exported {store} of {files.root} ({tokens} tokens) to {output}")
    return 0


def import_store(workspace: Path, snapshot: Path) -> int:
    from dmem_lsp.workspace.snapshots import check_fingerprint, read_snapshot

    files = WorkspaceStore(workspace)
    try:
        store, tensor, theirs, tokens = read_snapshot(snapshot, numpy=True)
    except StoreError as error:
        print(error, file=sys.stderr)
        return 1
    if not files.acquire():
        return _ask_server(files, {"action": "import", "file": str(snapshot.resolve())})
    try:
        files.clean_temporary_files()
        if files.state_path.exists():
            saved = files.read_saved(numpy=True)
        else:
            saved = Saved({name: np.zeros_like(tensor) for name in theirs["config"]["stores"]}, theirs)
        states, mine = saved.states, saved.fingerprint
        check_fingerprint(snapshot, theirs, mine, "this memory")
        operations.check_import(states, snapshot, store, tensor)
        states = {**states, store: tensor}
        manifest, _ = files.read_manifest()
        manifest.update(mine)
        manifest.update(tokens=saved.tokens, sources=saved.sources)
        record_import(manifest, store, tokens, str(snapshot))
        files.save_states(states, mine, manifest["tokens"], manifest["sources"])
        files.write_manifest(manifest)
        print(f"imported {store} ({tokens} tokens) into {files.root}")
        return 0
    except StoreError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        files.release()
