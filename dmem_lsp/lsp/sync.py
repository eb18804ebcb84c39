"""Document sync and workspace folders: what the editor says changed, handed to the learner.

The documents themselves are pygls' (``documents.py``); the learner (``workspace/learning``)
remembers what was edited, once an edit is saved, closed or settled. Workspace folders open
their memory once the model is loaded (before, ``loading.py`` opens them all when it is).
"""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types
from pygls.uris import to_fs_path

from dmem_lsp.lsp.server import DmemServer

__all__ = ["did_change", "did_change_workspace_folders", "did_close", "did_open", "did_save"]


def did_open(ls: DmemServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.learner.opened(params.text_document.uri, params.text_document.text)


def did_change(ls: DmemServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.learner.changed(params.text_document.uri)


async def did_save(ls: DmemServer, params: types.DidSaveTextDocumentParams) -> None:
    await ls.learner.flush_edit(params.text_document.uri)


async def did_close(ls: DmemServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.learner.closed(params.text_document.uri)
    await ls.learner.flush_edit(params.text_document.uri, closing=True)


async def did_change_workspace_folders(ls: DmemServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    if ls.engine is None:  # folders open once the model is loaded
        return
    for folder in params.event.removed:
        await ls.learner.close(Path(to_fs_path(folder.uri)))
    for folder in params.event.added:
        await ls.open_folder(Path(to_fs_path(folder.uri)))
