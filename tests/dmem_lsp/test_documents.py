"""``Document`` against pygls' ``TextDocument`` (the reference): the same text after every
incremental change, and a change at the end of a huge document made without splitting it."""

from __future__ import annotations

import random

import pytest
from lsprotocol import types
from pygls.workspace import TextDocument, Workspace
from pygls.workspace.position_codec import PositionCodec

from dmem_lsp.lsp.documents import Document, use_documents
from tests.dmem_lsp.test_positions import CountingSource

PIECES = ["ab", "\n", "\r\n", "😋", "é", " ", "xyz", "\u2028", "\r"]


def _change(rng: random.Random, text: str) -> types.TextDocumentContentChangePartial:
    lines = text.count("\n") + 2

    def position() -> types.Position:
        return types.Position(line=rng.randrange(lines), character=rng.randrange(8))

    start, end = sorted((position(), position()), key=lambda p: (p.line, p.character))
    new = "".join(rng.choice(PIECES) for _ in range(rng.randrange(4)))
    return types.TextDocumentContentChangePartial(range=types.Range(start=start, end=end), text=new)


@pytest.mark.parametrize(
    "encoding", [types.PositionEncodingKind.Utf16, types.PositionEncodingKind.Utf8], ids=lambda e: e.value
)
@pytest.mark.parametrize("seed", range(16))
def test_incremental_changes_give_pygls_text(seed, encoding):
    rng = random.Random(seed)
    text = "".join(rng.choice(PIECES[:7] if seed % 2 else PIECES) for _ in range(rng.randrange(60)))
    ours = Document("file:///t.py", text, position_codec=PositionCodec(encoding))
    theirs = TextDocument("file:///t.py", text, position_codec=PositionCodec(encoding))
    for step in range(60):
        change = _change(rng, theirs.source)
        ours.apply_change(change)
        theirs.apply_change(change)
        assert ours.source == theirs.source, (step, change)
        for _ in range(3):  # lookups between edits, from what the document's line cache holds
            position = _change(rng, theirs.source).range.end
            assert ours.offset_at_position(position) == theirs.offset_at_position(position), (step, position)


def test_a_keystroke_at_the_end_of_a_huge_document_splits_nothing():
    line = "    total = compute(a, b)  # é\n"
    text = CountingSource(line * (16_000_000 // len(line)))
    document = Document("file:///huge.py", text)
    lines = text.count("\n")
    here = types.Position(line=lines - 1, character=4)
    CountingSource.splits = 0
    document.apply_change(types.TextDocumentContentChangePartial(range=types.Range(start=here, end=here), text="x"))
    assert CountingSource.splits == 0
    assert document.source.endswith("    xtotal = compute(a, b)  # é\n") and len(document.source) == len(text) + 1
    assert document._lines.line == lines - 1, "typing on at this line counts from its start, not from the top"


def test_a_workspace_creates_documents_once_told_to():
    workspace = Workspace(None)
    use_documents(workspace)
    workspace.put_text_document(types.TextDocumentItem(uri="file:///a.py", language_id="python", version=1, text="x\n"))
    assert isinstance(workspace.get_text_document("file:///a.py"), Document)
