"""The JSON-RPC protocol with pygls 2.1's silent failures closed.

pygls structures a message inside ``json.loads(object_hook=...)``; when a request's params
do not fit their lsprotocol type it raises there, the reader logs it and drops the message,
and the client waits forever. Here such a request is answered with InvalidParams (naming
the bad fields), and a body that is not JSON at all gets a ParseError response (id null),
as JSON-RPC 2.0 asks.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import cattrs
from lsprotocol.types import ErrorCodes
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol

__all__ = ["DmemProtocol", "QuietExpectedErrors", "as_json"]

log = logging.getLogger(__name__)


def as_json(value: Any) -> Any:
    """pygls hands custom messages' params (and untyped results) over as nested namedtuples:
    back to plain JSON values."""
    if hasattr(value, "_asdict"):
        return {key: as_json(item) for key, item in value._asdict().items()}
    if isinstance(value, (list, tuple)):
        return [as_json(item) for item in value]
    return value


class _Answered:
    """A message that was already answered while being structured: nothing more to do."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data


def _describe(error: BaseException) -> str:
    cause = error.__cause__
    if isinstance(cause, (cattrs.ClassValidationError, cattrs.IterableValidationError)):
        problems = cattrs.transform_error(cause)  # "... @ $.params.position.line"
        return "; ".join(p.replace("@ $.", "@ ", 1) for p in problems[:6])
    return str(cause or error)


class QuietExpectedErrors(logging.Filter):
    """Keep pygls from logging tracebacks for errors that are answered to the client.

    Invalid params, a failed load and the like are the user's business, not bugs: they
    are answered with a JSON-RPC error and logged by this server as one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Unable to deserialize message"):
            return False  # DmemProtocol.structure_message logs it
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, json.JSONDecodeError) or (
            isinstance(error, JsonRpcException) and not isinstance(error, JsonRpcInternalError)
        ):
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = f"{record.msg % record.args if record.args else record.msg}: {error}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class DmemProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            method = data.get("method", "")
            detail = _describe(error)
            if "id" in data and method:
                log.warning("request %s (%s) has invalid params: %s", data["id"], method, detail)
                self._send_response(
                    data["id"],
                    error=JsonRpcInvalidParams(f"invalid params for {method}: {detail}").to_response_error(),
                )
            else:
                log.warning("ignoring a malformed message (%s): %s", method or "no method", detail)
            return _Answered(data)

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Answered):
            return
        super().handle_message(message)

    def answer_parse_error(self, error: json.JSONDecodeError) -> None:
        """Reply to a body that is not JSON (the id cannot be known, so it is null)."""
        log.warning("received a message that is not JSON: %s", error)
        response = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": int(ErrorCodes.ParseError), "message": f"parse error: {error}"},
        }
        self._send_data(response)
