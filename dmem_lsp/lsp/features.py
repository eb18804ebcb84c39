"""The LSP surface: every handler registered on a ``DmemServer``, in one place.

Handlers are thin and live by LSP area: completion.py (inline completion and completion),
explain.py (dmem/explain, its command and code action), sync.py (document sync, workspace
folders), commands.py (the memory's commands, dmem/debugStep). They find the document text,
call one function of ``assist`` through ``DmemServer.run`` (the inference worker) and wrap
the answer in lsprotocol types. Requests are async so that cancellation reaches the job while
it runs. The life cycle's handlers (initialize, initialized, shutdown, exit, settings) are here.
"""

from __future__ import annotations

from typing import Any

from lsprotocol import types

from dmem_lsp.lsp import commands, explain, sync
from dmem_lsp.lsp.completion import ACCEPT, completion, inline_completion, wants_completion
from dmem_lsp.lsp.documents import use_documents
from dmem_lsp.lsp.explain import EXPLAIN, EXPLAIN_COMMAND
from dmem_lsp.lsp.server import DmemServer

__all__ = ["create_server", "EXPLAIN", "EXPLAIN_COMMAND"]


def create_server(overrides: dict[str, Any] | None = None) -> DmemServer:
    """A server with every feature registered; ``overrides`` are command-line settings."""
    server = DmemServer(overrides)
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.SHUTDOWN)(shutdown)
    server.feature(types.EXIT)(exit_now)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    # textDocument/completion: registered in `initialize`, for clients without inline completion
    server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.Empty])
    )(explain.code_action)
    server.feature(EXPLAIN)(explain.explain)
    server.command(EXPLAIN_COMMAND)(explain.explain_command)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(sync.did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(sync.did_change)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))(sync.did_save)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(sync.did_close)
    server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)(sync.did_change_workspace_folders)
    server.feature(commands.DEBUG_STEP)(commands.debug_step)
    server.command(commands.REMEMBER)(commands.remember_debug_step)
    server.command(ACCEPT)(commands.accept_completion)
    server.command(commands.RESET)(commands.reset_memory)
    server.command(commands.STATUS_COMMAND)(commands.memory_status)
    return server


def initialize(ls: DmemServer, params: types.InitializeParams) -> None:
    use_documents(ls.workspace)  # edits of a huge document cost no loop over its lines
    ls.apply_settings(params.initialization_options)
    registered = types.TEXT_DOCUMENT_COMPLETION in ls.protocol.fm.features
    if not registered and wants_completion(params.capabilities):
        # pygls builds the capabilities after this handler: completionProvider is advertised
        # only here, so a client never asks for both and runs two generations per pause
        ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))(completion)


def initialized(ls: DmemServer, params: types.InitializedParams) -> None:
    ls.start_loading()


async def shutdown(ls: DmemServer, params: None) -> None:
    await ls.close()


async def exit_now(ls: DmemServer, params: None) -> None:
    """``exit``: leave at once, with 0 after ``shutdown`` and 1 without (as LSP says).

    ``shutdown`` has saved every folder's memory (if it is still saving, this waits for it);
    without it, it is saved now. Then the
    process ends without the interpreter's teardown, which unloads torch for seconds
    (clients kill a server that lingers 2 s after ``exit``) and cancels tasks whose
    messages can no longer be written.
    """
    shut_down = ls.protocol.shutdown_requested
    try:
        await ls.close()  # saved by shutdown already; or still saving (this waits); or not yet
    finally:
        ls.exit_process(0 if shut_down else 1)


async def did_change_configuration(ls: DmemServer, params: types.DidChangeConfigurationParams) -> None:
    if params.settings is None or params.settings == {}:
        await ls.pull_settings()  # the pull model: the notification only says "ask me"
    else:
        ls.apply_settings(params.settings)
