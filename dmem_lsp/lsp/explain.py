"""Explanations: the request ``dmem/explain``, the command ``dmem.explain`` and its code action.

Both read the code in a range (a cursor: its line) and its surroundings, and ask
``assist.explain`` on the worker, cut short at ``explain.deadlineMs``. The request answers
``{markdown}``; the command answers null at once and then opens the explanation as a markdown
file (``window/showDocument``), or shows it as a message. An explanation asked about an
error is remembered as a debugging step.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.uris import to_fs_path

from dmem_lsp.lsp import explanations
from dmem_lsp.lsp.arguments import CONVERTER, Explain, parse, parse_object
from dmem_lsp.lsp.messages import as_json
from dmem_lsp.lsp.server import DmemServer
from dmem_lsp.runtime import assist
from dmem_lsp.runtime.prompts import MAX_CHARS_PER_TOKEN
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.learning import log_failure, looks_like_an_error

__all__ = ["EXPLAIN", "EXPLAIN_COMMAND", "code_action", "explain", "explain_command"]

log = logging.getLogger(__name__)

EXPLAIN = "dmem/explain"
"""Request ``{textDocument: {uri}, range}`` → ``{markdown}``."""
EXPLAIN_COMMAND = "dmem.explain"
"""Command with arguments ``[uri, range]`` (or one object like dmem/explain's params): answers
null at once; the explanation is then opened as a markdown file (or shown as a message)."""


def code_action(ls: DmemServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    arguments = [params.text_document.uri, CONVERTER.unstructure(params.range)]
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


async def explain(ls: DmemServer, params: Any) -> dict[str, str]:
    target = parse_object(as_json(params), Explain, f"{EXPLAIN} expects {{textDocument: {{uri}}, range}}")
    question = _question(ls, target.text_document.uri, target.range)
    return {"markdown": await _explain(ls, question, target.work_done_token)}


async def explain_command(ls: DmemServer, *arguments: Any) -> None:
    """Answer at once (clients wait for commands with short timeouts, and many drop the result);
    the explanation follows through ``_explain_and_show``."""
    target = parse(EXPLAIN_COMMAND, Explain, arguments)
    question = _question(ls, target.text_document.uri, target.range)
    asyncio.ensure_future(_explain_and_show(ls, question)).add_done_callback(log_failure)
