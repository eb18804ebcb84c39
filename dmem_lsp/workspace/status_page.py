"""A memory's status, written once: its facts (``folder_status``) and its page (``status_markdown``).

``dmem.memoryStatus`` answers both (``{"folders": [...], "markdown": "..."}``): the folders
for programs, the page for people. VS Code opens the page, Neovim's ``:DmemStatus`` shows it
in a floating window and ``dmem-lsp memory status`` prints it, so the status reads the same
everywhere. The terminal builds its facts from the files (numpy states, no server), the
server from the folder it holds (``memory_status``); both through ``folder_status``.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pygls.uris import to_fs_path

from dmem_lsp.workspace import operations

if TYPE_CHECKING:
    from dmem_lsp.workspace.folders import WorkspaceMemory
    from dmem_lsp.workspace.store import WorkspaceStore

__all__ = ["LAST", "folder_status", "memory_status", "status_markdown"]

LAST = 5
"""Writes shown per store, and things not written shown per folder."""

DIGEST = 16
"""Hex digits of a state's sha256 on the page."""


def folder_status(
    files: WorkspaceStore,
    manifest: dict[str, Any],
    states: dict[str, Any],
    folder: str,
    last: int = LAST,
    **facts: Any,
) -> dict[str, Any]:
    """One folder of the answer: ``folder`` (its URI), ``directory`` and ``fileBytes`` (where the
    memory is kept), ``backbone`` and ``adapterSha256`` (what it is bound to), ``stores`` (per
    store: ``tokens``, ``sha256``, ``lastWrites``) and ``skipped``; then ``facts``, those of
    the caller: the server's ``readOnly``, ``adapter`` and ``config``, the terminal's ``server``
    (who holds the memory) and ``problems`` (what could not be read)."""
    size = files.state_path.stat().st_size if files.state_path.exists() else 0
    return {
        "folder": folder,
        "directory": str(files.dir),
        "fileBytes": size,
        "backbone": manifest.get("backbone", {}).get("id"),
        "adapterSha256": manifest.get("adapter_sha256"),
        "stores": operations.stores_status(manifest, states, last),
        "skipped": operations.skipped(manifest, last),
        **facts,
    }


def memory_status(memory: WorkspaceMemory, last: int = LAST) -> dict[str, Any]:
    """``folder_status`` of a folder the server holds."""
    return folder_status(
        memory.files,
        memory.manifest,
        memory.states,
        memory.uri,
        last,
        readOnly=memory.read_only,
        adapter=str(memory.adapter.source or "a fresh adapter (--adapter none)"),
        config=str(memory.config.path) if memory.config.path else None,
    )


def status_markdown(folders: Iterable[dict[str, Any]]) -> str:
    """The page: per folder, where its memory is kept, its adapter, a table of its stores
    (tokens, state sha256), its last writes and what was refused."""
    pages = [_folder_page(folder) for folder in folders]
    if not pages:
        pages = ["No workspace folder has a memory yet (open a folder; the model must be loaded)."]
    return "# dmem memory\n\n" + "\n\n".join(pages) + "\n"


def _folder_page(f: dict[str, Any]) -> str:
    read_only = ", **read-only**: another dmem-lsp holds it" if f.get("readOnly") else ""
    lines = [f"## {_path(f['folder'])}", "", f"Kept in `{f['directory']}` ({_size(f.get('fileBytes', 0))}){read_only}."]
    if f.get("server"):
        lines += ["", f"Server: {f['server']}."]
    for problem in f.get("problems", ()):
        lines += ["", f"**Problem**: {problem}"]
    if f.get("adapter"):
        config = f" (from `{f['config']}`)" if f.get("config") else ""
        lines += ["", f"Adapter: `{f['adapter']}`{config}."]
    if f.get("backbone") or f.get("adapterSha256"):
        sha = str(f.get("adapterSha256") or "?")[:DIGEST]
        lines += ["", f"Backbone: `{f.get('backbone') or '?'}`, adapter sha256 `{sha}`."]
    lines += ["", "| store | tokens | state sha256 |", "|---|---:|---|"]
    for store, info in f.get("stores", {}).items():
        digest = f"`{info['sha256'][:DIGEST]}`" if info.get("sha256") else "-"
        lines.append(f"| {store} | {info.get('tokens', 0)} | {digest} |")
    writes = sorted(
        (entry for info in f.get("stores", {}).values() for entry in info.get("lastWrites", [])),
        key=lambda entry: str(entry.get("time", "")),
    )
    if writes:
        lines += ["", "### Last writes", "", *map(_write, writes)]
    if f.get("skipped"):
        lines += ["", "### Refused", "", *map(_refusal, f["skipped"])]
    return "\n".join(lines)


def _write(e: dict[str, Any]) -> str:
    tokens = "" if e.get("tokens") is None else f", {e['tokens']} tokens"
    return f"- {e.get('time', '?')}: {e.get('store', '?')} ← {e.get('source', '?')} ({e.get('kind', '?')}{tokens})"


def _refusal(e: dict[str, Any]) -> str:
    return f"- {e.get('time', '?')}: {e.get('source', '?')} ({e.get('kind', '?')}): {e.get('skipped', '')}"


def _path(uri: str) -> str:
    """The path of a ``file:`` URI (pygls' ``to_fs_path``, as ``folders.path_of``); another URI as it is."""
    return (to_fs_path(uri) or uri) if uri.startswith("file:") else uri


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"
