"""The LSP surface: one thin handler per method, registered on a ``DmemServer``.

Handlers find the document text, call one function of ``assist`` through
``DmemServer.run`` (the inference worker) and wrap the answer in lsprotocol types.
Requests are async so that cancellation reaches the job while it runs.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import cattrs
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from . import assist
from .protocol import as_json
from .server import DmemServer

__all__ = ["create_server", "EXPLAIN", "EXPLAIN_COMMAND"]

EXPLAIN = "dmem/explain"
"""Request ``{textDocument: {uri}, range}`` → ``{markdown}``."""
EXPLAIN_COMMAND = "dmem.explain"
"""Command with arguments ``[uri, range]`` (or one object like dmem/explain's params)."""


def create_server(overrides: dict[str, Any] | None = None) -> DmemServer:
    """A server with every feature registered; ``overrides`` are command-line settings."""
    server = DmemServer(overrides)
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.SHUTDOWN)(shutdown)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(resolve_provider=False))(completion)
    server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.Empty])
    )(code_action)
    server.feature(EXPLAIN)(explain)
    server.command(EXPLAIN_COMMAND)(explain_command)
    return server


def initialize(ls: DmemServer, params: types.InitializeParams) -> None:
    ls.apply_settings(params.initialization_options)


def initialized(ls: DmemServer, params: types.InitializedParams) -> None:
    ls.start_loading()


def shutdown(ls: DmemServer, params: None) -> None:
    ls.close()


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
    offset = document.offset_at_position(position)
    prefix, suffix = source[:offset], source[offset:]
    answer = await ls.run(
        "completion",
        lambda engine, stop, on_token: assist.complete(engine, prefix, suffix, settings, stop, on_token),
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
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=here)])


async def completion(ls: DmemServer, params: types.CompletionParams) -> types.CompletionList | None:
    automatic = params.context is not None and params.context.trigger_kind != types.CompletionTriggerKind.Invoked
    text = await _complete(ls, params.text_document.uri, params.position, automatic, params.work_done_token)
    if text is None:
        return None
    here = types.Range(start=params.position, end=params.position)
    label = text.strip().splitlines()[0][:60] if text.strip() else text
    item = types.CompletionItem(
        label=label,
        kind=types.CompletionItemKind.Text,
        detail="dmem",
        filter_text="",
        text_edit=types.TextEdit(range=here, new_text=text),
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


async def _explain(ls: DmemServer, uri: str, selection: types.Range, token: types.ProgressToken | None) -> dict[str, str]:
    document, source = ls.document_text(uri)
    if selection.start == selection.end:  # a cursor: explain its line
        selection = types.Range(
            start=types.Position(line=selection.start.line, character=0),
            end=types.Position(line=selection.start.line + 1, character=0),
        )
    start, end = document.offset_at_position(selection.start), document.offset_at_position(selection.end)
    code = source[start:end]
    if not code.strip():
        raise JsonRpcInvalidParams(f"{EXPLAIN}: the range holds no code to explain")
    context = source[max(0, start - 4000) : start] + code + source[end : end + 2000]
    language = document.language_id or PurePosixPath(document.path or uri).suffix.lstrip(".") or "text"
    settings = ls.settings.explain
    answer = await ls.run(
        "explain",
        lambda engine, stop, on_token: assist.explain(engine, code, context, language, settings, stop, on_token),
        token=token,
    )
    return {"markdown": answer.text}


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
    return await _explain(ls, uri, selection, token)


async def explain_command(ls: DmemServer, *arguments: Any) -> dict[str, str]:
    usage = f"{EXPLAIN_COMMAND} expects the arguments [uri, range] or [{{textDocument: {{uri}}, range}}]"
    if len(arguments) == 2:
        raw = {"textDocument": {"uri": arguments[0]}, "range": as_json(arguments[1])}
    elif len(arguments) == 1:
        raw = as_json(arguments[0])
    else:
        raise JsonRpcInvalidParams(usage)
    uri, selection, token = _explain_target(ls, raw, usage)
    return await _explain(ls, uri, selection, token)
