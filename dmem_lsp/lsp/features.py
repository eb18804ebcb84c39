"""The LSP surface: one thin handler per method, registered on a ``DmemServer``.

Handlers find the document text, call one function of ``assist`` through
``DmemServer.run`` (the inference worker) and wrap the answer in lsprotocol types.
Requests are async so that cancellation reaches the job while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.uris import to_fs_path

from dmem_lsp.lsp import explanations
from dmem_lsp.lsp.documents import use_documents
from dmem_lsp.lsp.protocol import as_json
from dmem_lsp.lsp.server import DmemServer, RequestFailed
from dmem_lsp.runtime import assist
from dmem_lsp.runtime.prompts import MAX_CHARS_PER_TOKEN, window
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.learning import log_failure, looks_like_an_error

__all__ = ["create_server", "EXPLAIN", "EXPLAIN_COMMAND"]

log = logging.getLogger(__name__)

EXPLAIN = "dmem/explain"
"""Request ``{textDocument: {uri}, range}`` → ``{markdown}``."""
EXPLAIN_COMMAND = "dmem.explain"
"""Command with arguments ``[uri, range]`` (or one object like dmem/explain's params): answers
null at once; the explanation is then opened as a markdown file (or shown as a message)."""
DEBUG_STEP = "dmem/debugStep"
"""Notification ``{uri?, text, kind}``: a diagnostic, a test failure, a stack trace."""
REMEMBER = "dmem.rememberDebugStep"
ACCEPT = "dmem.acceptCompletion"
RESET = "dmem.resetMemory"
STATUS_COMMAND = "dmem.memoryStatus"


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
    )(code_action)
    server.feature(EXPLAIN)(explain)
    server.command(EXPLAIN_COMMAND)(explain_command)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))(did_save)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)(did_change_workspace_folders)
    server.feature(DEBUG_STEP)(debug_step)
    server.command(REMEMBER)(remember_debug_step)
    server.command(ACCEPT)(accept_completion)
    server.command(RESET)(reset_memory)
    server.command(STATUS_COMMAND)(memory_status)
    return server


def initialize(ls: DmemServer, params: types.InitializeParams) -> None:
    use_documents(ls.workspace)  # edits of a huge document cost no loop over its lines
    ls.apply_settings(params.initialization_options)
    registered = types.TEXT_DOCUMENT_COMPLETION in ls.protocol.fm.features
    if not registered and not _has_inline_completion(params.capabilities):
        # pygls builds the capabilities after this handler: completionProvider is advertised
        # only here, so a client never asks for both and runs two generations per pause
        ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))(completion)


def _has_inline_completion(capabilities: types.ClientCapabilities) -> bool:
    """Whether the client shows inline completions (ghost text) itself, as VS Code does."""
    text_document = capabilities.text_document
    return text_document is not None and text_document.inline_completion is not None


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


async def _complete(
    ls: DmemServer, uri: str, position: types.Position, automatic: bool, token: types.ProgressToken | None
) -> str | None:
    settings = ls.settings.completion
    if not settings.enabled:
        return None
    document, source = ls.document_text(uri)
    offset = document.offset_at_position(position)  # a Document: no split into lines, counted from its line cache
    prefix, suffix = window(source, offset, settings.prefix_tokens, settings.suffix_tokens)
    answer = await ls.run(
        "completion",
        lambda engine, stop, on_token: assist.complete(engine, prefix, suffix, settings, stop, on_token),
        uri=uri,
        token=token,
        supersede=uri,
        debounce_ms=settings.debounce_ms if automatic else 0,
    )
    return answer.text or None


async def inline_completion(ls: DmemServer, params: types.InlineCompletionParams) -> types.InlineCompletionList | None:
    automatic = params.context.trigger_kind == types.InlineCompletionTriggerKind.Automatic
    text = await _complete(ls, params.text_document.uri, params.position, automatic, params.work_done_token)
    if text is None:
        return None
    here = types.Range(start=params.position, end=params.position)
    accept = types.Command(title="Accept", command=ACCEPT, arguments=[params.text_document.uri, text])
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=here, command=accept)])


async def completion(ls: DmemServer, params: types.CompletionParams) -> types.CompletionList | None:
    automatic = params.context is not None and params.context.trigger_kind != types.CompletionTriggerKind.Invoked
    # the item replaces the word before the cursor (as typed when asked), so that clients which
    # filter by that word and replace it (eglot, ALE) keep the item and the typed characters
    document, source = ls.document_text(params.text_document.uri)
    offset = document.offset_at_position(params.position)
    word = assist.word_before(source[:offset])
    start = document.client_position_at_offset(offset - len(word))
    text = await _complete(ls, params.text_document.uri, params.position, automatic, params.work_done_token)
    if text is None:
        return None
    whole = word + text
    label = whole.splitlines()[0][:60] if word else (text.strip().splitlines() or [text])[0][:60]
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="dmem",
        filter_text=label,
        text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=whole),
        insert_text_format=types.InsertTextFormat.PlainText,
    )
    # incomplete: the client asks again as the user types, instead of filtering this item
    return types.CompletionList(is_incomplete=True, items=[item])


def code_action(ls: DmemServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    arguments = [params.text_document.uri, ls.protocol._converter.unstructure(params.range)]
    return [
        types.CodeAction(
            title="Explain with dmem",
            kind=types.CodeActionKind.Empty,
            command=types.Command(title="Explain with dmem", command=EXPLAIN_COMMAND, arguments=arguments),
        )
    ]


@dataclass(frozen=True)
class _Question:
    """What an explanation is asked about."""

    uri: str
    selection: types.Range
    """Whole lines when the client sent a cursor."""
    code: str
    context: str
    language: str


def _question(ls: DmemServer, uri: str, selection: types.Range) -> _Question:
    document, source = ls.document_text(uri)
    if selection.start == selection.end:  # a cursor: explain its line
        selection = types.Range(
            start=types.Position(line=selection.start.line, character=0),
            end=types.Position(line=selection.start.line + 1, character=0),
        )
    start, end = document.offset_at_position(selection.start), document.offset_at_position(selection.end)
    settings = ls.settings.explain
    # the prompt keeps the head of the code and the tail of its surroundings: cut both
    # from the document as text enough for the token budget, never the whole selection
    code = source[start : min(end, start + settings.code_tokens * MAX_CHARS_PER_TOKEN)]
    if not code.strip():
        raise JsonRpcInvalidParams(f"{EXPLAIN}: the range holds no code to explain")
    context = source[max(0, start - 4000, end + 2000 - settings.code_tokens * MAX_CHARS_PER_TOKEN) : end + 2000]
    language = document.language_id or PurePosixPath(document.path or uri).suffix.lstrip(".") or "text"
    return _Question(uri, selection, code, context, language)


async def _explain(
    ls: DmemServer, question: _Question, token: types.ProgressToken | None, supersede: str | None = None
) -> str:
    """The markdown explanation; cut short (and saying so) at ``explain.deadlineMs``."""
    settings = ls.settings.explain
    answer = await ls.run(
        "explain",
        lambda engine, stop, on_token: assist.explain(
            engine, question.code, question.context, question.language, settings, stop, on_token
        ),
        uri=question.uri,
        token=token,
        supersede=supersede,
        deadline_ms=settings.deadline_ms,
    )
    if looks_like_an_error(question.code):  # an explanation asked about an error is a debugging step
        step = texts.explanation_step(question.code, answer.text)
        asyncio.ensure_future(ls.learner.debug_step(question.uri, step, "explanation")).add_done_callback(log_failure)
    if answer.cancelled:
        return f"{answer.text}\n\n_Cut short: explain.deadlineMs is {settings.deadline_ms} ms._"
    return answer.text


async def _explain_and_show(ls: DmemServer, question: _Question) -> None:
    """Explain in the background, under progress, then open the markdown in the editor
    (``window/showDocument``), or show it as a message where the client cannot open it."""
    first, last = question.selection.start.line + 1, question.selection.end.line
    if question.selection.end.character > 0 or last < first:
        last += 1
    name = PurePosixPath(to_fs_path(question.uri) or question.uri).name
    where = explanations.title(name, first, last)
    token = await ls.create_progress()
    if token is None:
        ls.show(types.MessageType.Info, f"dmem: explaining {where}…")
    try:
        # a key of its own: never superseded, but stopped at shutdown like every running request
        markdown = await _explain(ls, question, token, supersede=f"{EXPLAIN_COMMAND}:{uuid.uuid4()}")
    except JsonRpcException as error:
        ls.show(types.MessageType.Error, f"dmem: explain failed: {error}")
        return
    path = explanations.write_explanation(name, first, last, question.code, question.language, markdown)
    if ls.can_show_documents():
        try:
            shown = await asyncio.wait_for(
                ls.window_show_document_async(types.ShowDocumentParams(uri=path.as_uri(), take_focus=True)), 60
            )
            if shown.success:
                return
        except Exception as error:  # the message below still reaches the user
            log.warning("window/showDocument failed: %s", error)
    ls.show(types.MessageType.Info, f"dmem: {where} (in {path}):\n\n{markdown}")


def _explain_target(ls: DmemServer, raw: Any, usage: str) -> tuple[str, types.Range, Any]:
    try:
        if not isinstance(raw, dict):
            raise TypeError(f"params must be an object, not {raw!r}")
        uri = raw["textDocument"]["uri"]
        if not isinstance(uri, str):
            raise TypeError("textDocument.uri must be a string")
        selection = ls.protocol._converter.structure(raw["range"], types.Range)
    except (KeyError, TypeError, ValueError, cattrs.BaseValidationError) as error:
        detail = "; ".join(cattrs.transform_error(error)) if isinstance(error, cattrs.BaseValidationError) else error
        raise JsonRpcInvalidParams(f"{usage}: {detail}") from error
    return uri, selection, raw.get("workDoneToken")


async def explain(ls: DmemServer, params: Any) -> dict[str, str]:
    raw = as_json(params)
    uri, selection, token = _explain_target(ls, raw, f"{EXPLAIN} expects {{textDocument: {{uri}}, range}}")
    return {"markdown": await _explain(ls, _question(ls, uri, selection), token)}


async def explain_command(ls: DmemServer, *arguments: Any) -> None:
    """Answer at once (clients wait for commands with short timeouts, and many drop the result);
    the explanation follows through ``_explain_and_show``."""
    usage = f"{EXPLAIN_COMMAND} expects the arguments [uri, range] or [{{textDocument: {{uri}}, range}}]"
    if len(arguments) == 2:
        raw = {"textDocument": {"uri": arguments[0]}, "range": as_json(arguments[1])}
    elif len(arguments) == 1:
        raw = as_json(arguments[0])
    else:
        raise JsonRpcInvalidParams(usage)
    uri, selection, _ = _explain_target(ls, raw, usage)
    question = _question(ls, uri, selection)
    asyncio.ensure_future(_explain_and_show(ls, question)).add_done_callback(log_failure)


# -- memory -----------------------------------------------------------------------------


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


async def debug_step(ls: DmemServer, params: Any) -> None:
    raw = as_json(params)
    if not isinstance(raw, dict) or not isinstance(raw.get("text"), str):
        ls.show(types.MessageType.Warning, f"dmem-lsp: {DEBUG_STEP} needs {{uri?, text, kind}}, got {raw!r}")
        return
    await ls.wait_for_engine()
    await ls.learner.debug_step(raw.get("uri"), raw["text"], str(raw.get("kind") or "note"))


async def remember_debug_step(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    """Arguments ``[text]``, ``[uri, text]`` or ``[{uri?, text, kind?}]``; ``{tokens, reason?, redacted?}``."""
    values = [as_json(argument) for argument in arguments]
    if len(values) == 1 and isinstance(values[0], dict):
        uri, text, kind = values[0].get("uri"), values[0].get("text"), values[0].get("kind") or "note"
    elif len(values) in (1, 2) and all(isinstance(v, str) for v in values):
        uri, text, kind = (None, values[0], "note") if len(values) == 1 else (values[0], values[1], "note")
    else:
        uri = text = kind = None
    if not isinstance(text, str) or not text.strip():
        raise JsonRpcInvalidParams(f"{REMEMBER} expects [text], [uri, text] or [{{uri?, text, kind?}}]")
    await ls.wait_for_engine()
    return await ls.learner.debug_step(uri, text, str(kind))


async def accept_completion(ls: DmemServer, uri: str, text: str) -> None:
    await ls.wait_for_engine()
    await ls.learner.accepted(uri, text)


def _folders(ls: DmemServer, folder: Any) -> list:
    if folder is None:
        return list(ls.learner.folders.values())
    if not isinstance(folder, str):
        raise JsonRpcInvalidParams(f"expected a folder URI, got {folder!r}")
    memory = ls.learner.folder_for(folder)
    if memory is None:
        raise JsonRpcInvalidParams(f"{folder} is not in an open workspace folder")
    return [memory]


async def reset_memory(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    """Arguments ``[]``, ``[store]``, ``[store, folderUri]`` or ``[{store?, folder?}]``: all stores of every
    folder by default."""
    values = [as_json(argument) for argument in arguments]
    options = (
        values[0]
        if len(values) == 1 and isinstance(values[0], dict)
        else dict(zip(("store", "folder"), values, strict=False))
    )
    await ls.wait_for_engine()
    store = options.get("store")
    stores = list(ls.engine.memory.stores)
    if store is not None and store not in stores:
        raise JsonRpcInvalidParams(f"{RESET}: no store {store!r}; the stores are {', '.join(stores)}")
    folders = _folders(ls, options.get("folder"))
    for memory in folders:
        if memory.read_only:
            raise RequestFailed(f"the memory of {memory.root} is read-only here (in use by another dmem-lsp)")
        await ls.learner.reset(memory, [store] if store else stores, "editor")
    return {"folders": [memory.uri for memory in folders], "stores": [store] if store else stores}


async def memory_status(ls: DmemServer, *arguments: Any) -> dict[str, Any]:
    """Arguments ``[]``, ``[folderUri]`` or ``[{folder?}]``."""
    await ls.wait_for_engine()
    folder = as_json(arguments[0]) if arguments else None
    if isinstance(folder, dict):
        folder = folder.get("folder")
    if folder is not None and not isinstance(folder, str):
        raise JsonRpcInvalidParams(f"{STATUS_COMMAND}: expected a folder URI, got {folder!r}")
    return {"folders": [ls.learner.status(memory) for memory in _folders(ls, folder)]}
