"""``arguments.parse``: each command's shapes give its attrs class; anything else is InvalidParams.

The shapes are those the editors' plugins and the tests send (one object, or positional
values); the error says what the command expects and what was wrong, with the member's path.
"""

from __future__ import annotations

from collections import namedtuple

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from dmem_lsp.lsp.arguments import (
    CONVERTER,
    Accept,
    DebugStep,
    Explain,
    MemoryStatus,
    ResetMemory,
    parse,
    parse_object,
)

RANGE = {"start": {"line": 1, "character": 0}, "end": {"line": 2, "character": 4}}
SELECTION = types.Range(start=types.Position(line=1, character=0), end=types.Position(line=2, character=4))


@pytest.mark.parametrize(
    ("cls", "arguments", "expected"),
    [
        (Explain, ["file:///a.py", RANGE], Explain(types.TextDocumentIdentifier("file:///a.py"), SELECTION)),
        (
            Explain,
            [{"textDocument": {"uri": "file:///a.py"}, "range": RANGE, "workDoneToken": "t", "other": 1}],
            Explain(types.TextDocumentIdentifier("file:///a.py"), SELECTION, "t"),
        ),
        (DebugStep, ["the build fails"], DebugStep("the build fails")),
        (DebugStep, ["file:///a.py", "the build fails"], DebugStep("the build fails", uri="file:///a.py")),
        (
            DebugStep,
            [{"uri": "file:///a.py", "text": "Traceback", "kind": "stack trace"}],
            DebugStep("Traceback", uri="file:///a.py", kind="stack trace"),
        ),
        (DebugStep, [{"text": "a note", "kind": None}], DebugStep("a note")),
        (Accept, ["file:///a.py", "return a + b"], Accept("file:///a.py", "return a + b")),
        (ResetMemory, [], ResetMemory()),
        (ResetMemory, None, ResetMemory()),  # no "arguments" member at all
        (ResetMemory, ["debug"], ResetMemory(store="debug")),
        (ResetMemory, ["debug", "file:///w"], ResetMemory(store="debug", folder="file:///w")),
        (ResetMemory, [{"store": "edits", "folder": "file:///w"}], ResetMemory(store="edits", folder="file:///w")),
        (ResetMemory, [{}], ResetMemory()),
        (MemoryStatus, [], MemoryStatus()),
        (MemoryStatus, ["file:///w/setup.py"], MemoryStatus(folder="file:///w/setup.py")),
        (MemoryStatus, [{"folder": "file:///w"}], MemoryStatus(folder="file:///w")),
    ],
)
def test_every_shape_gives_the_class(cls: type, arguments: list | None, expected: object) -> None:
    assert parse("dmem.x", cls, arguments) == expected


@pytest.mark.parametrize(
    ("cls", "arguments", "says"),
    [
        (Explain, [1, 2, 3], "not 3 argument(s)"),
        (Explain, [], "not 0 argument(s)"),
        (Explain, [5, RANGE], "expected a string, not 5 @ $.text_document.uri"),
        (Explain, ["file:///a.py", {"start": RANGE["start"], "end": {"line": "y"}}], "end.line"),
        (Explain, [{"range": RANGE}], "required field missing @ $.text_document"),
        (DebugStep, [], "not 0 argument(s)"),
        (DebugStep, ["   "], "text is empty"),
        (DebugStep, [5], "expected a string, not 5 @ $.text"),
        (DebugStep, [{"uri": "file:///a.py"}], "required field missing @ $.text"),
        (DebugStep, [{"text": "a", "kind": 3}], "expected a string, not 3 @ $.kind"),
        (DebugStep, ["a", "b", "c"], "not 3 argument(s)"),
        (Accept, [{"uri": "file:///a.py", "text": "x"}], "not 1 argument(s)"),  # positional only
        (Accept, ["file:///a.py", 7], "expected a string, not 7 @ $.text"),
        (ResetMemory, [1], "expected a string, not 1 @ $.store"),
        (ResetMemory, ["debug", "file:///w", "extra"], "not 3 argument(s)"),
        (MemoryStatus, [{"folder": 3}], "expected a string, not 3 @ $.folder"),
        (MemoryStatus, [["file:///w"]], "expected a string"),
    ],
)
def test_anything_else_is_invalid_params(cls: type, arguments: list, says: str) -> None:
    with pytest.raises(JsonRpcInvalidParams) as raised:
        parse("dmem.x", cls, arguments)
    message = str(raised.value)
    assert message.startswith(f"dmem.x expects {cls.USAGE}") and says in message, message


def test_namedtuples_from_pygls_are_plain_json() -> None:
    """pygls hands untyped values over as namedtuples; they parse as the objects they were."""
    Folder = namedtuple("Folder", ["folder"])
    assert parse("dmem.x", MemoryStatus, [Folder("file:///w")]) == MemoryStatus(folder="file:///w")


def test_a_request_object() -> None:
    expects = "dmem/explain expects {textDocument: {uri}, range}"
    raw = {"textDocument": {"uri": "file:///a.py"}, "range": RANGE}
    assert parse_object(raw, Explain, expects).range == SELECTION
    with pytest.raises(JsonRpcInvalidParams, match="params must be an object"):
        parse_object(["file:///a.py"], Explain, expects)
    with pytest.raises(JsonRpcInvalidParams, match=r"^dmem/explain expects .*end\.character"):
        parse_object({**raw, "range": {"start": RANGE["start"], "end": {"line": 1}}}, Explain, expects)


def test_a_range_goes_out_as_it_comes_in() -> None:
    """The code action's arguments are what ``dmem.explain`` parses back."""
    arguments = ["file:///a.py", CONVERTER.unstructure(SELECTION)]
    assert arguments[1] == RANGE
    assert parse("dmem.explain", Explain, arguments).range == SELECTION
