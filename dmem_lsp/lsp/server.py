"""The language server object: settings, the engine's life cycle and running jobs.

``DmemServer`` owns all server state. It answers ``initialize`` without importing torch,
loads the model on the inference worker once the client is ``initialized`` (under
work-done progress, with ``dmem/status`` notifications), and runs every request as a job
on that worker from an async handler, so ``$/cancelRequest`` (or a newer completion for the
same document) reaches the job's stop flag while it runs. The LSP handlers themselves are
in ``features.py``.

However the client goes, what memory acknowledged is saved before the process ends:
``shutdown``, ``exit`` (also right after ``shutdown``: it waits for that save), the client
closing stdin (Vim/ALE and Emacs send no ``shutdown``), SIGTERM, SIGINT and SIGHUP (after a
signal, what the client wrote before it is handled first: Vim and Emacs signal, then close
stdin). Edits being written then are waited for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from dmem_lsp import __version__
from dmem_lsp.lsp.framing import CHUNK, serve, stdin_chunks
from dmem_lsp.lsp.protocol import DmemProtocol, QuietExpectedErrors, as_json
from dmem_lsp.runtime.assist import Answer
from dmem_lsp.runtime.scheduling import KeyedDebouncer
from dmem_lsp.runtime.settings import ENGINE_KEYS, Settings, merge, parse_settings
from dmem_lsp.runtime.worker import Priority, Worker
from dmem_lsp.workspace.config import AdapterSource, WorkspaceConfigError, read_workspace_config
from dmem_lsp.workspace.learning import Learner

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine

__all__ = ["DmemServer", "RequestFailed", "STATUS"]

log = logging.getLogger(__name__)

STATUS = "dmem/status"
"""Notification: ``{state: loading|ready|error, message, model, device, quantization}``."""

QUIET = QuietExpectedErrors()

REPORT_EVERY = 8
"""Tokens between two progress reports of a request that carries a workDoneToken."""

MAX_UNOPENED_BYTES = 4 * 2**20
"""The largest file read from disk for a request about a document the editor did not open (4 MiB)."""

SIGNAL_GRACE_S = 1.0
"""After SIGTERM, SIGINT or SIGHUP, how long the server waits for the client to close stdin
before it saves and leaves. Vim and Emacs close it right after the signal, and what they wrote
before (the last ``didChange``, a ``didSave``) may still be unread in the pipe: it is handled first."""


class RequestFailed(JsonRpcException):
    """LSP's RequestFailed: the request was valid but could not be served."""

    CODE = int(types.LSPErrorCodes.RequestFailed)


class DmemServer(LanguageServer):
    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        super().__init__(
            name="dmem-lsp",
            version=__version__,
            protocol_cls=DmemProtocol,
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        for name in ("pygls.protocol.json_rpc", "pygls.server"):
            logging.getLogger(name).addFilter(QUIET)
        self.overrides: dict[str, Any] = dict(overrides or {})
        """Settings from the command line: they win over the editor's."""
        self.client_settings: Any = None
        self.settings, _ = parse_settings(self.overrides)
        self.worker = Worker()
        self.engine: Engine | None = None
        self.loaded_with: Settings | None = None
        self._engine_ready: asyncio.Future[Engine] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._latest: dict[str, asyncio.Task[Any]] = {}
        self._quiet: KeyedDebouncer[object] = KeyedDebouncer("a request")
        """Automatic requests wait here for ``debounce_ms`` of quiet on their supersede key."""
        self._closing: asyncio.Future[None] | None = None
        self._input_ended: asyncio.Event | None = None
        """Set once everything the client wrote to stdin has been handled (start_io)."""
        self.learner = Learner(self)

    # -- settings -----------------------------------------------------------------------

    def apply_settings(self, raw: Any) -> None:
        """Adopt the editor's settings (command-line flags still win); say what was ignored."""
        if raw is not None:
            self.client_settings = raw
        settings, warnings = parse_settings(merge(self.client_settings, self.overrides))
        for warning in warnings:
            self.show(types.MessageType.Warning, f"dmem-lsp setting {warning}")
        if self.loaded_with is not None:
            changed = [key for key in ENGINE_KEYS if getattr(settings, key) != getattr(self.loaded_with, key)]
            if changed:
                self.show(
                    types.MessageType.Info,
                    f"dmem-lsp: restart the server to apply {', '.join(changed)} (the model is already loaded)",
                )
        self.settings = settings

    async def pull_settings(self) -> None:
        """Ask the client for the ``dmem`` section when it supports workspace/configuration."""
        workspace = self.client_capabilities.workspace
        if not (workspace and workspace.configuration):
            return
        try:
            items = types.ConfigurationParams(items=[types.ConfigurationItem(section="dmem")])
            values = await asyncio.wait_for(self.workspace_configuration_async(items), timeout=5)
        except Exception as error:  # a client that does not answer is no reason to stop
            log.warning("workspace/configuration failed: %s", error)
            return
        value = as_json(values[0]) if values else None
        if isinstance(value, dict):
            self.apply_settings(value)

    # -- talking to the user ------------------------------------------------------------

    def show(self, kind: types.MessageType, message: str) -> None:
        log.log(logging.WARNING if kind <= types.MessageType.Warning else logging.INFO, "%s", message)
        self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def notify_client(self, method: str, params: Any) -> None:
        self.protocol.notify(method, params)

    def set_status(self, state: str, message: str = "") -> None:
        settings = self.loaded_with or self.settings
        self.protocol.notify(
            STATUS,
            {
                "state": state,
                "message": message,
                "model": settings.model,
                "adapter": settings.adapter,
                "device": str(self.engine.device) if self.engine else settings.device,
                "quantization": self.engine.quantization if self.engine else settings.quantization,
            },
        )

    # -- the engine ---------------------------------------------------------------------

    def engine_ready(self) -> asyncio.Future[Engine]:
        if self._engine_ready is None:
            self._engine_ready = asyncio.get_running_loop().create_future()
        return self._engine_ready

    def start_loading(self) -> None:
        if self._load_task is None:
            self._load_task = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        await self.pull_settings()
        settings = self.settings
        ready = self.engine_ready()
        token = await self.begin_progress("dmem: loading the model", settings.model)
        if token is None:  # a client without $/progress (eglot 1.9, ALE) still says what happens
            self.show(types.MessageType.Info, f"dmem-lsp: loading {settings.model}…")
        self.set_status("loading", f"loading {settings.model}")
        loop = asyncio.get_running_loop()

        def report(message: str) -> None:
            log.info("loading: %s", message)
            loop.call_soon_threadsafe(self.report_progress, token, message)

        prefer = self.preferred_adapter()

        def load(should_stop: Callable[[], bool]) -> Engine:
            from dmem_lsp.runtime.engine import Engine  # imports torch: only ever on the worker

            return Engine.load(settings.engine_options(), progress=report, prefer=prefer)

        job = self.worker.submit(load, priority=Priority.LOAD, name="load")
        try:
            engine = await asyncio.wrap_future(job.future)
        except Exception as error:
            message = _load_failure(error)
            log.error("loading failed: %s", message, exc_info=not _is_engine_error(error))
            ready.set_exception(RequestFailed(f"the model did not load: {message}"))
            ready.exception()  # retrieved: requests see it through shield()
            self.end_progress(token, f"failed: {message}")
            self.set_status("error", message)
            self.show(types.MessageType.Error, f"dmem-lsp could not load the model: {message}")
            return
        self.engine, self.loaded_with = engine, settings
        ready.set_result(engine)
        self.end_progress(token, "ready")
        self.set_status("ready", f"{settings.model} on {engine.device}")
        if token is None:
            self.show(types.MessageType.Info, f"dmem-lsp: ready ({settings.model} on {engine.device})")
        for root in self.workspace_roots():
            await self.open_folder(root)

    def preferred_adapter(self) -> AdapterSource | None:
        """The adapter the first folder's ``.dmem/config.toml`` names: attached first, so a team's
        adapter loads even when its δ-mem configuration differs from the settings' adapter."""
        for root in self.workspace_roots():
            try:
                config, _ = read_workspace_config(root)
            except WorkspaceConfigError:
                continue  # said when the folder opens
            if config.adapter is not None:
                return config.adapter
        return None

    def workspace_roots(self) -> list[Path]:
        uris = [folder.uri for folder in self.workspace.folders.values()] or [self.workspace.root_uri]
        return [Path(to_fs_path(uri)) for uri in uris if uri and uri.startswith("file:")]

    async def open_folder(self, root: Path) -> None:
        try:
            await self.learner.open(root)
        except Exception as error:  # one folder's memory failing is no reason to stop serving
            log.exception("cannot open the memory of %s", root)
            self.show(types.MessageType.Error, f"dmem-lsp: cannot open the memory of {root}: {error}")

    # -- progress the server starts --------------------------------------------------------

    async def create_progress(self) -> str | None:
        """A token the client accepted (window/workDoneProgress/create); None if it shows no progress."""
        window = self.client_capabilities.window
        if not (window and window.work_done_progress):
            return None
        token = f"dmem-{uuid.uuid4()}"
        try:
            await self.work_done_progress.create_async(token)
        except Exception as error:
            log.warning("the client refused a progress token: %s", error)
            return None
        return token

    async def begin_progress(self, title: str, message: str = "") -> str | None:
        token = await self.create_progress()
        if token is not None:
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=title, message=message))
        return token

    def can_show_documents(self) -> bool:
        window = self.client_capabilities.window
        return bool(window and window.show_document and window.show_document.support)

    def report_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=message))

    def end_progress(self, token: str | None, message: str) -> None:
        if token is not None:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=message))
            self.work_done_progress.tokens.pop(token, None)

    async def wait_for_engine(self) -> Engine:
        """The engine, once loaded; a RequestFailed with the load error if it did not load."""
        return await asyncio.shield(self.engine_ready())

    # -- running requests ---------------------------------------------------------------

    async def run(
        self,
        name: str,
        fn: Callable[[Engine, Callable[[], bool], Callable[[int], None]], Answer],
        *,
        uri: str | None = None,
        token: types.ProgressToken | None = None,
        supersede: str | None = None,
        debounce_ms: int = 0,
        deadline_ms: int = 0,
    ) -> Answer:
        """Run ``fn(engine, should_stop, on_token)`` on the worker and await its answer.

        The model reads the memory of the workspace folder holding ``uri`` (none outside
        every folder). Cancelling the awaiting task (``$/cancelRequest``, shutdown, or a newer request
        with the same ``supersede`` key) stops the job within one decoding step. So does
        ``deadline_ms`` (0: none) after the engine is ready: then ``fn`` sees ``should_stop()``
        and its answer comes back (``Answer.cancelled``), so a request whose client gave up
        (a timeout sends no $/cancelRequest) frees the worker for the next one.
        """
        task = asyncio.current_task()
        if supersede is not None and task is not None:
            previous = self._latest.get(supersede)
            if previous is not None and not previous.done():
                previous.cancel()
            self._latest[supersede] = task
        try:
            engine = await self.wait_for_engine()
            if debounce_ms:
                await self._quiet.quiet(supersede if supersede is not None else task, debounce_ms / 1000)
            on_token = self._progress(name, token)
            folder = self.learner.folder_for(uri)

            deadline = time.monotonic() + deadline_ms / 1000 if deadline_ms else None

            def serve(stop: Callable[[], bool]) -> Answer:
                self.learner.activate(folder)
                if deadline is None:
                    return fn(engine, stop, on_token)
                return fn(engine, lambda: stop() or time.monotonic() >= deadline, on_token)

            job = self.worker.submit(serve, priority=Priority.REQUEST, name=name)
            try:
                answer = await asyncio.wrap_future(job.future)
            except asyncio.CancelledError:
                job.cancel()
                if token is not None:
                    self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="cancelled"))
                raise
            except Exception as error:
                raise _request_failure(name, error) from error
            if token is not None:
                self.work_done_progress.end(token, types.WorkDoneProgressEnd(message=f"{answer.tokens} tokens"))
            return answer
        finally:
            if token is not None:
                self.work_done_progress.tokens.pop(token, None)
            if supersede is not None and self._latest.get(supersede) is task:
                del self._latest[supersede]

    def _progress(self, name: str, token: types.ProgressToken | None) -> Callable[[int], None]:
        """Begin the client's progress for a request; the callback reports tokens from the worker."""
        if token is None:
            return lambda count: None
        self.work_done_progress.begin(token, types.WorkDoneProgressBegin(title=f"dmem: {name}", cancellable=True))
        task = asyncio.current_task()
        # window/workDoneProgress/cancel cancels this future: treat it as $/cancelRequest
        self.work_done_progress.tokens[token].add_done_callback(
            lambda future: task.cancel() if future.cancelled() and task is not None else None
        )
        loop = asyncio.get_running_loop()

        def on_token(count: int) -> None:
            if count % REPORT_EVERY == 1 or REPORT_EVERY == 1:
                value = types.WorkDoneProgressReport(message=f"{count} tokens")
                loop.call_soon_threadsafe(self.work_done_progress.report, token, value)

        return on_token

    def editor_text(self, uri: str) -> str | None:
        """The text of ``uri`` as the editor has it open; None when it is not open."""
        document = self.workspace.text_documents.get(uri)
        return None if document is None else document.source

    def current_text(self, uri: str) -> str:
        """The editor's text of ``uri`` if it is open, else the file's; OSError when it cannot be read."""
        return self.workspace.get_text_document(uri).source

    def document_text(self, uri: str) -> tuple[Any, str]:
        """The document (open in the editor, or read from disk) and its text.

        A document the editor did not open is read only if it is a regular file of at most
        ``MAX_UNOPENED_BYTES`` (a FIFO would block the server, ``/dev/zero`` never ends).
        """
        document = self.workspace.get_text_document(uri)
        if document._source is not None:  # open in the editor
            return document, document.source
        try:
            text = _read_regular_file(document.path if uri.startswith("file:") else None)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise JsonRpcInvalidParams(f"{uri} is not open in the editor and cannot be read: {error}") from error
        document._source = text  # pygls would read the file again on every access
        return document, text

    # -- the transports: pygls' own, with this package's reader (see framing.py) -----------------

    def start_io(self, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
        self._stop_event = threading.Event()
        self.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

        async def main() -> None:
            self._input_ended = asyncio.Event()
            self.catch_signals()
            read = stdin_chunks(stdin or sys.stdin.buffer)
            try:
                await serve(read, self.protocol.receive_frame, self.protocol.receive_junk, self._stop_event)
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
        self._stop_event = stop = threading.Event()

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.protocol.set_writer(writer)  # type: ignore[arg-type]
            await serve(lambda: reader.read(CHUNK), self.protocol.receive_frame, self.protocol.receive_junk, stop)
            self.shutdown()

        async def main() -> None:
            self._server = await asyncio.start_server(connection, host, port)
            log.info("Serving on %s", ", ".join(str(sock.getsockname()) for sock in self._server.sockets))
            async with self._server:
                await self._server.serve_forever()

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


def _read_regular_file(path: str | None) -> str:
    if path is None:
        raise ValueError("it is not a file: URI")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then tells what was opened
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        if info.st_size > MAX_UNOPENED_BYTES:
            limit = MAX_UNOPENED_BYTES // 2**20
            raise ValueError(f"it is larger than {limit} MiB ({info.st_size} bytes); open it in the editor")
        data = b""
        while len(data) <= MAX_UNOPENED_BYTES and (chunk := os.read(fd, MAX_UNOPENED_BYTES + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > MAX_UNOPENED_BYTES:
        raise ValueError(f"it is larger than {MAX_UNOPENED_BYTES // 2**20} MiB; open it in the editor")
    return data.decode("utf-8")


def _is_engine_error(error: BaseException) -> bool:
    return type(error).__name__ == "EngineError"


def _load_failure(error: BaseException) -> str:
    if _is_engine_error(error):
        return str(error)
    return f"unexpected {type(error).__name__}: {error}. Run `dmem-lsp doctor` and include its output in a bug report"


def _request_failure(name: str, error: BaseException) -> JsonRpcException:
    if isinstance(error, JsonRpcException):
        return error
    if type(error).__name__ == "OutOfMemoryError":
        return RequestFailed(
            f"{name}: CUDA ran out of memory; lower completion.prefixTokens, "
            "use --quantization nf4 or a smaller --model"
        )
    log.exception("%s failed", name, exc_info=error)
    return RequestFailed(f"{name} failed: {type(error).__name__}: {error}")
