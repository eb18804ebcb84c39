"""``offset_at`` against pygls' own ``offset_at_position`` (the slow, obviously correct
reference), and the cursor of a huge document found without splitting it into lines."""

from __future__ import annotations

import random

import pytest
from lsprotocol import types
from pygls.workspace import TextDocument
from pygls.workspace.position_codec import PositionCodec

from dmem_lsp.lsp.positions import offset_at

TEXTS = {
    "empty": "",
    "one-char": "a",
    "final-newline": "a\nbc\n",
    "no-final-newline": "a\nbc",
    "crlf": "ab\r\ncd\r\n\r\nef",
    "lone-cr": "ab\rcd\nef",
    "form-feed": "ab\x0ccd\nef",
    "line-separator": "ab\u2028cd\nef",
    "astral": "é😋x\nz😋y\n😋",
    "blank-lines": "\n\n\n",
}
ENCODINGS = [types.PositionEncodingKind.Utf16, types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf32]


def _random_texts(count: int) -> dict[str, str]:
    rng = random.Random(0)
    pieces = ["ab", "\n", "\r\n", "😋", "é", " ", "\t", "xyz", "\r"]
    return {f"random{i}": "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for i in range(count)}


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.value)
@pytest.mark.parametrize(
    "name, text", list({**TEXTS, **_random_texts(20)}.items()), ids=lambda v: v if len(v) < 20 else None
)
def test_offsets_are_pygls_offsets(name, text, encoding):
    document = TextDocument("file:///t.py", text, position_codec=PositionCodec(encoding))
    for line in range(text.count("\n") + 3):
        for character in range(12):
            position = types.Position(line=line, character=character)
            assert offset_at(document, position) == document.offset_at_position(position), (line, character)


class CountingSource(str):
    """A document text that counts how often it is split into lines."""

    splits = 0

    def splitlines(self, keepends=False):
        CountingSource.splits += 1
        return super().splitlines(keepends)


def test_a_huge_document_is_not_split_into_lines():
    line = "    total = compute(a, b)  # é\n"
    text = CountingSource(line * (16_000_000 // len(line)))
    document = TextDocument("file:///huge.py", text)
    document._source = text  # as opened; pygls keeps the str it was given
    lines = text.count("\n")
    for position, expected in (
        (types.Position(line=lines - 1, character=8), len(text) - len(line) + 8),
        (types.Position(line=lines, character=0), len(text)),  # the empty line after the last newline
        (types.Position(line=lines // 2, character=4), len(line) * (lines // 2) + 4),
    ):
        assert offset_at(document, position) == expected
    assert CountingSource.splits == 0
