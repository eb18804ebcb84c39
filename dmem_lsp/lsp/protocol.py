"""The JSON-RPC protocol with pygls 2.1's silent failures closed: every request gets one answer.

pygls drops, without a word to the client, a request whose params do not fit their
lsprotocol type, a body that is not JSON (or not UTF-8, or nested too deeply), a message
without ``"jsonrpc": "2.0"``, an id that is null or an object, requests after ``shutdown``,
and notification methods sent with an id; requests before ``initialize`` fail with an
internal error, and internal errors carry the Python traceback to the client. Here:

- ``receive_frame`` decodes a framed body itself and checks the envelope before pygls sees
  it: a body that is not JSON gets ParseError, a message that is not a valid request gets
  InvalidRequest (id null when the id itself is invalid), bad params get InvalidParams
  naming the fields; a notification method sent with an id is handled and answered null.
- Before ``initialize`` requests get ServerNotInitialized (notifications are dropped, as LSP
  says); after ``shutdown`` they get InvalidRequest; ``exit`` is always accepted.
- ``shutdown`` cancels every pending request (each is answered RequestCancelled) and saves.
- ``receive_junk`` handles bytes that were not a message (see ``framing``): logged, and a
  request found at their start is answered with InvalidRequest saying why.
- Errors are sent as one line; tracebacks stay in the log.

pygls 2.1 has no public API for some of this (its protocol's send and response methods, its
pending requests, its shutdown flag, its server): ``DmemProtocol`` uses those private members,
each saying why; every other use of one in this package is in ``pygls_internals``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import cattrs
from lsprotocol import types
from lsprotocol.types import ErrorCodes
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.protocol import LanguageServerProtocol, lsp_method

from dmem_lsp.lsp.framing import Frame, Junk
from dmem_lsp.lsp.messages import (
    INVALID_REQUEST,
    NOT_INITIALIZED,
    Rejected,
    as_json,
    decode,
    is_notification,
    one_line,
    salvage_request,
    valid_id,
)

__all__ = ["DmemProtocol", "as_json", "salvage_request"]

log = logging.getLogger(__name__)

DECODE_OFF_LOOP = 2**20
"""Bodies larger than this (1 MiB) are decoded on a thread, not on the event loop."""
_ENVELOPE = {"jsonrpc", "id", "method", "params"}


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


class DmemProtocol(LanguageServerProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialize_received = False
        self.shutdown_requested = False
        """Set when ``shutdown`` arrives: from then on only ``exit`` is accepted."""
        self._salvaged: set[int | str] = set()
        self.client_gone = False
        """Set when writing to the client failed (it quit): nothing more is sent."""

    # pygls' one way out: everything sent (pygls' answers, notifications, ours) passes here
    def _send_data(self, data: Any) -> None:
        """Send ``data``, unless the client has gone: once its end of the pipe is closed, what
        is left to do (saving memory as the client quits) must not be broken off by messages
        that can no longer arrive."""
        if self.client_gone:
            return
        try:
            super()._send_data(data)
        except BrokenPipeError:
            self.client_gone = True
            log.info("the client has gone: nothing more is sent to it")

    # -- what the reader hands over ---------------------------------------------------------

    async def receive_frame(self, frame: Frame) -> None:
        if frame.note:
            log.warning("a message was framed wrongly (%s): resynchronised", frame.note)
        try:
            if len(frame.body) > DECODE_OFF_LOOP:
                data = await asyncio.get_running_loop().run_in_executor(None, decode, frame.body)
            else:
                data = decode(frame.body)
        except Rejected as error:
            self._answer_broken(frame.body, error.code, error.message, or_null=True)
            return
        try:
            self.receive_message(data)
        except Exception:  # pygls answers what it handles; this is a bug of ours
            log.exception("cannot handle a message")
            if isinstance(data, dict) and "method" in data and valid_id(data.get("id")):
                self._error(data["id"], int(ErrorCodes.InternalError), "internal error: see the server's log")

    def receive_junk(self, junk: Junk) -> None:
        log.warning("skipped malformed input (%d bytes): %s", junk.size, junk.reason)
        if junk.too_large:  # a message dropped unread: the user may wonder where it went
            # the server this protocol belongs to: pygls keeps it only as ``_server``
            self._server.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning, message=f"dmem-lsp ignored a message: {junk.reason}"
                )
            )
        self._answer_broken(junk.prefix, INVALID_REQUEST, f"the message was skipped: {junk.reason}")

    def _answer_broken(self, prefix: bytes, code: int, message: str, or_null: bool = False) -> None:
        """Answer a message that could not be read: under its id if it is a readable request,
        else with id null if ``or_null`` (JSON-RPC's answer to a body that is not a request)."""
        found = salvage_request(prefix)
        if found is None:
            log.warning("%s", message)
            if or_null:
                self._error(None, code, message)
            return
        msg_id, method = found
        if msg_id in self._salvaged:
            return  # the rest of a message already answered
        self._salvaged.add(msg_id)
        log.warning("request %s (%s): %s", msg_id, method or "method unknown", message)
        self._error(msg_id, code, f"{method}: {message}" if method else message)

    # -- the envelope ----------------------------------------------------------------------

    def receive_message(self, data: Any) -> None:
        """Check a decoded message's envelope and the server's state, then let pygls handle it."""
        if not isinstance(data, dict):
            kind = "a batch (an array)" if isinstance(data, list) else type(data).__name__
            self._error(None, INVALID_REQUEST, f"invalid request: a message is a JSON object, not {kind}")
            return
        method, msg_id, is_request = data.get("method"), data.get("id"), "id" in data
        if "method" not in data:
            self._receive_response(data)
            return
        if not isinstance(method, str):
            shown = json.dumps(method)[:40]
            self._reject(is_request, msg_id, f"invalid request: the method must be a string, not {shown}")
            return
        if is_request and not valid_id(msg_id):
            shown = json.dumps(msg_id)[:40]
            self._reject(
                is_request, None, f"invalid request {method}: the id must be a number or a string, not {shown}"
            )
            return
        if data.get("jsonrpc") != "2.0":
            self._reject(is_request, msg_id, f'invalid request {method}: "jsonrpc" must be "2.0"')
            return
        if is_request and is_notification(method):
            log.warning("%s is a notification but came with id %s: handled as one and answered null", method, msg_id)
            self._send_data({"jsonrpc": "2.0", "id": msg_id, "result": None})
            is_request = False
        if method != types.EXIT:
            if self.shutdown_requested:
                self._reject(is_request, msg_id, f"{method}: the server is shutting down (only exit is accepted)")
                return
            if not self.initialize_received and method != types.INITIALIZE:
                self._reject(
                    is_request, msg_id, f"{method}: the server is not initialized (send initialize first)",
                    NOT_INITIALIZED,
                )
                return
            if method == types.INITIALIZE and self.initialize_received:
                self._reject(is_request, msg_id, "initialize was already received")
                return
        envelope = {key: value for key, value in data.items() if key in _ENVELOPE}
        envelope.setdefault("params", None)
        if not is_request:
            envelope.pop("id", None)
        message = self.structure_message(envelope)
        if method == types.INITIALIZE and not isinstance(message, _Answered):
            self.initialize_received = True
        self.handle_message(message)

    def _receive_response(self, data: dict[str, Any]) -> None:
        """A response to a request of the server's; never answered, so only logged when broken."""
        if not valid_id(data.get("id")) or not ("result" in data or "error" in data):
            if "id" in data:
                log.warning("ignoring a response that has no valid id, result or error: %.200s", json.dumps(data))
            else:
                message = "invalid request: a message has a method, or is a response with an id"
                self._error(None, INVALID_REQUEST, message)
            return
        if data.get("jsonrpc") != "2.0":
            log.warning('a response without "jsonrpc": "2.0" (id %s): accepted', data["id"])
        envelope = {key: data[key] for key in ("id", "result", "error") if key in data}
        self.handle_message(self.structure_message({"jsonrpc": "2.0", **envelope}))

    def _reject(self, is_request: bool, msg_id: Any, message: str, code: int = INVALID_REQUEST) -> None:
        """Answer a request with an error (id null if its id is invalid); a notification is only logged."""
        if is_request:
            log.warning("%s", message)
            self._error(msg_id if valid_id(msg_id) else None, code, message)
        else:
            log.warning("ignoring a notification: %s", message)

    def _error(self, msg_id: int | str | None, code: int, message: str) -> None:
        self._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": one_line(message)}})

    # pygls' one way to answer a request (its handlers' errors included): overridden to shorten them
    def _send_response(self, msg_id: Any, result: Any = None, error: types.ResponseError | None = None) -> None:
        """One line in the error; a traceback (pygls puts it in ``data``) stays in the log."""
        if error is not None:
            data = None if isinstance(error.data, dict) and "traceback" in error.data else error.data
            error = types.ResponseError(code=error.code, message=one_line(error.message), data=data)
        super()._send_response(msg_id, result, error)

    # -- shutdown ----------------------------------------------------------------------------

    @lsp_method(types.SHUTDOWN)
    def lsp_shutdown(self, *args: Any) -> Any:
        """Cancel every pending request (each is answered RequestCancelled), then the server's handler."""
        self.shutdown_requested = True
        current = self.msg_id
        # pygls keeps the requests it is answering only in ``_request_futures``; cancelling one
        # is what ``$/cancelRequest`` does (it answers RequestCancelled)
        for msg_id, future in list(self._request_futures.items()):  # callbacks may remove entries
            if msg_id != current and not future.done():
                future.cancel()
        if (user_handler := self.fm.features.get(types.SHUTDOWN)) is not None:
            yield user_handler, args, None
        self._shutdown = True  # what pygls' own shutdown handler sets: later messages are refused
        return None

    # -- what pygls structures ---------------------------------------------------------------

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
