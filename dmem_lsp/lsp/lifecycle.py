"""The transports and leaving: how the server runs, and how it ends without losing memory.

``start_io`` and ``start_tcp`` are pygls' own, with this package's reader (reader.py, framing.py).
However the client goes, what memory acknowledged is saved before the process ends:
``shutdown``, ``exit`` (also right after ``shutdown``: it waits for that save), the client
closing stdin (Vim/ALE and Emacs send no ``shutdown``), SIGTERM, SIGINT and SIGHUP (after a
signal, what the client wrote before it is handled first: Vim and Emacs signal, then close
stdin). Edits being written then are waited for.

``Lifecycle`` is a part of ``DmemServer`` (server.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, BinaryIO

from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from dmem_lsp.lsp.protocol import DmemProtocol
from dmem_lsp.lsp.pygls_internals import close_on_shutdown, stop_on_shutdown
from dmem_lsp.lsp.reader import CHUNK, serve, stdin_chunks

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine
    from dmem_lsp.runtime.worker import Worker
    from dmem_lsp.workspace.learning import Learner

__all__ = ["Lifecycle", "SIGNAL_GRACE_S"]

log = logging.getLogger(__name__)

SIGNAL_GRACE_S = 1.0
"""After SIGTERM, SIGINT or SIGHUP, how long the server waits for the client to close stdin
before it saves and leaves. Vim and Emacs close it right after the signal, and what they wrote
before (the last ``didChange``, a ``didSave``) may still be unread in the pipe: it is handled first."""


class Lifecycle(LanguageServer):
    """Running on stdio or TCP, closing once, and leaving on stdin's end or a signal."""

    protocol: DmemProtocol
    engine: Engine | None
    worker: Worker
    learner: Learner
    _latest: dict[str, asyncio.Task[Any]]
    """The running request of each ``supersede`` key (DmemServer.run): cancelled when closing."""

    _closing: asyncio.Future[None] | None
    _input_ended: asyncio.Event | None
    """Set once everything the client wrote to stdin has been handled (start_io)."""

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        stop = stop_on_shutdown(self)
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

        async def main() -> None:
            self._input_ended = asyncio.Event()
            self.catch_signals()
            read = stdin_chunks(stdin or sys.stdin.buffer)
            try:
                await serve(read, self.protocol.receive_frame, self.protocol.receive_junk, stop)
            except BrokenPipeError:
                pass
            self._input_ended.set()
            await self.leave("the client closed stdin")  # Vim/ALE and Emacs send no shutdown

        try:
            asyncio.run(main())
        except BrokenPipeError:
            log.error("the client closed the connection")
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self.shutdown()

    def start_tcp(self, host: str, port: int) -> None:
        stop = stop_on_shutdown(self)

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            await serve(lambda: reader.read(CHUNK), self.protocol.receive_frame, self.protocol.receive_junk, stop)
            self.shutdown()

        async def main() -> None:
            server = await asyncio.start_server(connection, host, port)
            close_on_shutdown(self, server)
            log.info("Serving on %s", ", ".join(str(sock.getsockname()) for sock in server.sockets))
            async with server:
                await server.serve_forever()

        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            log.debug("the TCP server was stopped")

    def exit_process(self, code: int) -> None:
        """End the process now: flush what was written (the protocol, the logs), skip teardown."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # the client already closed the pipe
        logging.shutdown()
        os._exit(code)

    async def close(self) -> None:
        """Stop what runs, save every folder's memory and let go of its lock. Runs once;
        later calls wait for it, and cancelling a caller does not stop the save."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for task in list(self._latest.values()):
            task.cancel()
        try:
            if self.engine is not None:
                await self.learner.shutdown()
        except Exception:  # shutdown must still answer, and the other folders be saved
            log.exception("closing the workspace memory failed")
        finally:
            self.worker.close()

    async def leave(self, why: str) -> None:
        """Save what was acknowledged and end the process (the client went away or a signal came)."""
        log.info("%s: saving memory and exiting", why)
        await self.close()
        self.exit_process(0)

    async def leave_on_signal(self, name: str) -> None:
        """Leave once what the client wrote before the signal is handled: at stdin's end, or
        after ``SIGNAL_GRACE_S`` if the client keeps it open."""
        if self._input_ended is not None and not self._input_ended.is_set():
            log.info("%s: handling what the client sent before leaving", name)
            try:
                await asyncio.wait_for(self._input_ended.wait(), SIGNAL_GRACE_S)
            except asyncio.TimeoutError:
                pass
        await self.leave(name)

    def catch_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP: leave as at stdin's end (a second one while saving waits for the same save)."""
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", None)):
            if number is None:
                continue
            try:
                loop.add_signal_handler(
                    number, lambda name=number.name: asyncio.ensure_future(self.leave_on_signal(name))
                )
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
                pass
