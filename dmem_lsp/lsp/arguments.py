"""The arguments of the server's commands (``workspace/executeCommand``), typed, and their one parser.

Each command's arguments are one attrs class. Clients send them in one of a few shapes: one
JSON object whose members are the class's fields (camelCase, as LSP writes them; members
not a field are ignored), or positional values, the shapes of ``POSITIONAL`` (how many values
→ the members they are, a dotted name nesting: ``textDocument.uri``). ``parse`` takes the
arguments pygls hands over and gives the class, or answers the request InvalidParams saying
what it expects and what was wrong. The converter is lsprotocol's (its types, such as a
``Range``, structure as in a request), with strings that must be strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import attrs
import cattrs
from lsprotocol import types
from lsprotocol.converters import get_converter
from pygls.exceptions import JsonRpcInvalidParams

from dmem_lsp.lsp.messages import as_json

__all__ = [
    "Accept",
    "Arguments",
    "CONVERTER",
    "DebugStep",
    "Explain",
    "MemoryStatus",
    "ResetMemory",
    "parse",
    "parse_object",
]


class _Invalid(ValueError):
    """A value this module rejects: its message says why (cattrs' own would say "invalid value")."""


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, not {value!r}")
    return value


def _format(error: BaseException, expected: Any) -> str:
    if isinstance(error, _Invalid):
        return str(error)
    return cattrs.v.format_exception(error, expected)


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter()
    converter.register_structure_hook(str, _strict_str)  # cattrs would make 5 into "5"
    return get_converter(converter)


CONVERTER = _converter()
"""lsprotocol's converter (LSP types as in requests), strings strict."""


def _not_blank(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value.strip():
        raise _Invalid(f"{attribute.name} is empty")


class Arguments:
    """What every command's arguments class says about its shapes."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {}
    """How many positional values → the members they are (dotted: nested)."""
    USAGE: ClassVar[str] = ""
    """The shapes, as the error says them."""
    OBJECT: ClassVar[bool] = True
    """Whether one JSON object is a shape too."""


@attrs.frozen
class Explain(Arguments):
    """``dmem.explain`` and ``dmem/explain``: the code in ``range`` of a document."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {2: ("textDocument.uri", "range")}
    USAGE: ClassVar[str] = "the arguments [uri, range] or [{textDocument: {uri}, range}]"

    text_document: types.TextDocumentIdentifier
    range: types.Range
    work_done_token: int | str | None = None
    """Passed through as given (lsprotocol's converter does not check a ProgressToken)."""


@attrs.frozen
class DebugStep(Arguments):
    """``dmem.rememberDebugStep``: a debugging step to remember (in the memory of ``uri``'s folder)."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {1: ("text",), 2: ("uri", "text")}
    USAGE: ClassVar[str] = "[text], [uri, text] or [{uri?, text, kind?}]"

    text: str = attrs.field(validator=_not_blank)
    uri: str | None = None
    kind: str | None = None
    """What the step is ("stack trace", "test failure"); "note" when not said."""


@attrs.frozen
class Accept(Arguments):
    """``dmem.acceptCompletion`` (the command of an inline completion): ``text`` was accepted in ``uri``."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {2: ("uri", "text")}
    USAGE: ClassVar[str] = "[uri, text]"
    OBJECT: ClassVar[bool] = False

    uri: str
    text: str


@attrs.frozen
class ResetMemory(Arguments):
    """``dmem.resetMemory``: one store (all by default) of one folder (every folder by default)."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {0: (), 1: ("store",), 2: ("store", "folder")}
    USAGE: ClassVar[str] = "[], [store], [store, folderUri] or [{store?, folder?}]"

    store: str | None = None
    folder: str | None = None
    """A URI in the folder."""


@attrs.frozen
class MemoryStatus(Arguments):
    """``dmem.memoryStatus``: of one folder (every folder by default)."""

    POSITIONAL: ClassVar[dict[int, tuple[str, ...]]] = {0: (), 1: ("folder",)}
    USAGE: ClassVar[str] = "[], [folderUri] or [{folder?}]"

    folder: str | None = None
    """A URI in the folder."""


T = TypeVar("T", bound=Arguments)


def parse(command: str, cls: type[T], arguments: Sequence[Any] | None) -> T:
    """``arguments`` as ``cls``: one object, or positional values in one of its ``POSITIONAL`` shapes."""
    values = [as_json(argument) for argument in arguments or ()]
    usage = cls.USAGE
    raw: dict[str, Any] = {}
    if len(values) == 1 and isinstance(values[0], dict) and cls.OBJECT:
        raw = values[0]
    elif (names := cls.POSITIONAL.get(len(values))) is not None:
        for name, value in zip(names, values, strict=True):
            *outer, last = name.split(".")
            where = raw
            for key in outer:
                where = where.setdefault(key, {})
            where[last] = value
    else:
        raise JsonRpcInvalidParams(f"{command} expects {usage}, not {len(values)} argument(s)")
    return _structure(raw, cls, f"{command} expects {usage}")


def parse_object(raw: Any, cls: type[T], expects: str) -> T:
    """``raw`` (a request's params) as ``cls``; InvalidParams starting with ``expects`` if it is not one."""
    if not isinstance(raw, dict):
        raise JsonRpcInvalidParams(f"{expects}: params must be an object, not {raw!r}")
    return _structure(raw, cls, expects)


def _structure(raw: dict[str, Any], cls: type[T], expects: str) -> T:
    try:
        return CONVERTER.structure(raw, cls)
    except cattrs.BaseValidationError as error:
        detail = "; ".join(cattrs.transform_error(error, format_exception=_format))
    raise JsonRpcInvalidParams(f"{expects}: {detail}")
