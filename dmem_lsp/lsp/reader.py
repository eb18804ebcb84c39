"""The reader: the client's bytes, from stdin or a TCP stream, through ``FrameParser`` to the protocol.

``stdin_chunks`` reads stdin on a daemon thread, so a blocking read never holds up the event
loop or the interpreter's exit; ``serve`` feeds what a read gives to a parser (``framing``)
and hands every frame and every run of junk on, until the stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from dmem_lsp.lsp.framing import Frame, FrameParser, Junk

__all__ = ["CHUNK", "serve", "stdin_chunks"]

log = logging.getLogger(__name__)

CHUNK = 65536
"""The most bytes one read asks for."""


def stdin_chunks(stream: BinaryIO) -> Callable[[], Awaitable[bytes]]:
    """``await read()`` gives the next bytes of ``stream`` (b"" at its end), read on a daemon thread."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def pump() -> None:
        while True:
            try:
                chunk = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK)
            except (OSError, ValueError) as error:
                log.error("cannot read the client's messages: %s", error)
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(chunks.put(chunk), loop).result()
            except (RuntimeError, asyncio.CancelledError):
                return  # the loop is gone
            if not chunk:
                return

    threading.Thread(target=pump, name="dmem-stdin", daemon=True).start()
    return chunks.get


async def serve(
    read: Callable[[], Awaitable[bytes]],
    on_frame: Callable[[Frame], Awaitable[None] | None],
    on_junk: Callable[[Junk], None],
    stop: threading.Event | None = None,
) -> None:
    """Feed what ``read`` gives to a parser and hand every event on, until the stream ends."""
    parser = FrameParser()
    while stop is None or not stop.is_set():
        data = await read()
        events = parser.feed(data) if data else parser.close()
        for event in events:
            if isinstance(event, Junk):
                on_junk(event)
            else:
                result = on_frame(event)
                if result is not None:
                    await result
        if not data:
            log.info("the client closed the stream")
            return
