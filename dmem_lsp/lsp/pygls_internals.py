"""What this package knows of pygls 2.1 beyond its public API, outside its protocol class.

pygls has no public API for a document's unread source, for the stop event and the socket
server its ``shutdown`` closes, or for telling in its logs an error it answered to the client
from a bug. Every use of a private pygls member outside ``DmemProtocol`` (protocol.py) is
here, in a named function saying why, and ``QuietExpectedErrors`` knows the records pygls logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING

from pygls.exceptions import JsonRpcException, JsonRpcInternalError

if TYPE_CHECKING:
    from pygls.server import JsonRPCServer
    from pygls.workspace import TextDocument

__all__ = ["QuietExpectedErrors", "close_on_shutdown", "keep_source", "stop_on_shutdown", "unread_source"]


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


def unread_source(document: TextDocument) -> str | None:
    """The text of ``document`` if the editor opened it (or ``keep_source`` gave it), else None.

    pygls' public ``source`` reads a document the editor did not open from disk, whatever the
    file is (a FIFO blocks it, ``/dev/zero`` never ends): only its private ``_source`` tells
    whether there is text without reading."""
    return document._source


def keep_source(document: TextDocument, text: str) -> None:
    """Give a document the editor did not open the text read from disk (``_source``: else
    pygls would read the file again on every access of ``source``)."""
    document._source = text


def stop_on_shutdown(server: JsonRPCServer) -> threading.Event:
    """A stop event that pygls' ``JsonRPCServer.shutdown`` sets: it sets only ``_stop_event``, and
    a server running its own transport (``start_io``) makes that event itself."""
    server._stop_event = event = threading.Event()
    return event


def close_on_shutdown(server: JsonRPCServer, tcp_server: asyncio.Server) -> None:
    """Have pygls' ``JsonRPCServer.shutdown`` close ``tcp_server`` (it closes only ``_server``)."""
    server._server = tcp_server
