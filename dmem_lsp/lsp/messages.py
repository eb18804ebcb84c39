"""JSON-RPC messages as bytes and as values, before pygls sees them.

A framed body is decoded (``decode``: Rejected with the JSON-RPC error when it is not
JSON); ``salvage_request`` reads the id and method of a body that is broken, so it can be
answered under its id; ``valid_id`` and ``is_notification`` check an envelope; ``as_json``
turns what pygls hands over back into plain JSON; ``one_line`` is an error message as sent.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from lsprotocol import types
from lsprotocol.types import ErrorCodes

__all__ = [
    "INVALID_REQUEST",
    "NOT_INITIALIZED",
    "PARSE_ERROR",
    "Rejected",
    "as_json",
    "decode",
    "is_notification",
    "one_line",
    "salvage_request",
    "valid_id",
]

PARSE_ERROR = int(ErrorCodes.ParseError)
INVALID_REQUEST = int(ErrorCodes.InvalidRequest)
NOT_INITIALIZED = int(ErrorCodes.ServerNotInitialized)


def as_json(value: Any) -> Any:
    """pygls hands custom messages' params (and untyped results) over as nested namedtuples:
    back to plain JSON values."""
    if hasattr(value, "_asdict"):
        return {key: as_json(item) for key, item in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    return value


_KEY = re.compile(r'"(id|method)"\s*:\s*')


def salvage_request(prefix: bytes) -> tuple[int | str, str | None] | None:
    """The id (and method, if it comes before the break) of the message whose body starts
    with ``prefix``, if its id can be read.

    Only top-level ``"id"`` and ``"method"`` members count (not ones inside params), and a
    number at the very end may have been cut, so a broken body is answered under its own
    id or not at all.
    """
    text = prefix.decode("utf-8", "replace").lstrip()
    if not text.startswith("{"):
        return None
    found: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    depth, in_string, escaped, i = 0, False, False, 0
    while i < len(text) and len(found) < 2:
        char = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            key = _KEY.match(text, i) if depth == 1 else None
            if key is not None:
                try:
                    value, i = decoder.raw_decode(text, key.end())
                except ValueError:
                    break  # cut inside the value
                if i == len(text) and not isinstance(value, str):
                    break  # a number at the end may have been cut short
                found.setdefault(key.group(1), value)
                continue
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth <= 0:
                break
        i += 1
    msg_id, method = found.get("id"), found.get("method")
    if not valid_id(msg_id):
        return None
    return msg_id, method if isinstance(method, str) else None


def valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def is_notification(method: str) -> bool:
    """An LSP notification method (its message has no id)."""
    message_type = types.METHOD_TO_TYPES.get(method, (None,))[0]
    return message_type is not None and "id" not in attrs.fields_dict(message_type)


class Rejected(Exception):
    """A body that is not a message: answered with ``code`` (ParseError, InvalidRequest) and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def decode(body: bytes) -> Any:
    """The JSON value of a framed body; Rejected if it is not UTF-8, not JSON or nested too deeply."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(PARSE_ERROR, f"parse error: the message is not UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise Rejected(PARSE_ERROR, f"parse error: {error}") from None
    except RecursionError:
        raise Rejected(INVALID_REQUEST, "the message is nested too deeply") from None


def one_line(message: str, limit: int = 1000) -> str:
    """``message`` on one line, cut at ``limit`` characters (an error as the client is sent it)."""
    line = " ".join(str(message).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
