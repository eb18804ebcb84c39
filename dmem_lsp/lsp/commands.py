"""The memory's commands (``workspace/executeCommand``) and the ``dmem/debugStep`` notification.

Each command parses its arguments with ``arguments.parse`` (InvalidParams when they do not
fit), waits for the engine, and asks the learner (``workspace/learning``):

- ``dmem.rememberDebugStep`` ``[text]``, ``[uri, text]`` or ``[{uri?, text, kind?}]``
  → ``{tokens, reason?, redacted?}``;
- ``dmem.acceptCompletion`` ``[uri, text]`` (an inline completion's command);
- ``dmem.resetMemory`` ``[]``, ``[store]``, ``[store, folderUri]`` or ``[{store?, folder?}]``: all
  stores of every folder by default → ``{folders, stores}``;
- ``dmem.memoryStatus`` ``[]``, ``[folderUri]`` or ``[{folder?}]`` → ``{folders, markdown}``: the
  facts per folder, and the page every client shows (``workspace/status_page``).
"""

from __future__ import annotations

from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from dmem_lsp.lsp.arguments import Accept, DebugStep, MemoryStatus, ResetMemory, parse
from dmem_lsp.lsp.completion import ACCEPT
from dmem_lsp.lsp.errors import RequestFailed
from dmem_lsp.lsp.messages import as_json
from dmem_lsp.lsp.server import DmemServer
from dmem_lsp.workspace.status_page import status_markdown

__all__ = [
    "ACCEPT",
    "DEBUG_STEP",
    "REMEMBER",
    "RESET",
    "STATUS_COMMAND",
    "accept_completion",
    "debug_step",
    "memory_status",
    "remember_debug_step",
    "reset_memory",
]

DEBUG_STEP = "dmem/debugStep"
"""Notification ``{uri?, text, kind}``: a diagnostic, a test failure, a stack trace."""
REMEMBER = "dmem.rememberDebugStep"
RESET = "dmem.resetMemory"
STATUS_COMMAND = "dmem.memoryStatus"


async def debug_step(ls: DmemServer, params: Any) -> None:
    raw = as_json(params)
    if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
        ls.show(types.MessageType.Warning, f"dmem-lsp: {DEBUG_STEP} needs {{uri?, text, kind}}, got {raw!r}")
        return
    await ls.wait_for_engine()
    await ls.learner.debug_step(raw.get("uri"), raw["text"], str(raw.get("kind") or "note"))


async def remember_debug_step(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    step = parse(REMEMBER, DebugStep, arguments)
    await ls.wait_for_engine()
    return await ls.learner.debug_step(step.uri, step.text, step.kind or "note")


async def accept_completion(ls: DmemServer, *arguments: Any) -> None:
    accepted = parse(ACCEPT, Accept, arguments)
    await ls.wait_for_engine()
    await ls.learner.accepted(accepted.uri, accepted.text)


def _folders(ls: DmemServer, folder: str | None) -> list:
    if folder is None:
        return list(ls.learner.folders.values())
    memory = ls.learner.folder_for(folder)
    if memory is None:
        raise JsonRpcInvalidParams(f"{folder} is not in an open workspace folder")
    return [memory]


async def reset_memory(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    options = parse(RESET, ResetMemory, arguments)
    engine = await ls.wait_for_engine()
    store = options.store
    stores = list(engine.memory.stores)
    if store is not None and store not in stores:
        raise JsonRpcInvalidParams(f"{RESET}: no store {store!r}; the stores are {', '.join(stores)}")
    folders = _folders(ls, options.folder)
    for memory in folders:
        if memory.read_only:
            raise RequestFailed(f"the memory of {memory.root} is read-only here (in use by another dmem-lsp)")
        await ls.learner.reset(memory, [store] if store else stores, "editor")
    return {"folders": [memory.uri for memory in folders], "stores": [store] if store else stores}


async def memory_status(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    options = parse(STATUS_COMMAND, MemoryStatus, arguments)
    await ls.wait_for_engine()
    folders = [ls.learner.status(memory) for memory in _folders(ls, options.folder)]
    return {"folders": folders, "markdown": status_markdown(folders)}
