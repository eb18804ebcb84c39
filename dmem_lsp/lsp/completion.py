"""Completion: ``textDocument/inlineCompletion`` (ghost text) and ``textDocument/completion``.

Both ask ``assist.complete`` for the text after the cursor, run on the worker and superseded
by a newer completion of the same document. ``textDocument/completion`` is registered (by
``features.initialize``) only for a client without inline completion (``wants_completion``),
so that no client asks for both. An inline completion carries the command
``dmem.acceptCompletion`` (commands.py).
"""

from __future__ import annotations

from lsprotocol import types

from dmem_lsp.lsp.server import DmemServer
from dmem_lsp.runtime import assist
from dmem_lsp.runtime.prompts import window

__all__ = ["ACCEPT", "completion", "inline_completion", "wants_completion"]

ACCEPT = "dmem.acceptCompletion"
"""Command with arguments ``[uri, text]``: the user accepted ``text`` in ``uri``."""


def wants_completion(capabilities: types.ClientCapabilities) -> bool:
    """Whether the client needs textDocument/completion: it does not show inline completions
    (ghost text) itself, as VS Code does."""
    text_document = capabilities.text_document
    return text_document is None or text_document.inline_completion is None


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
