"""The language server object: settings, the documents requests read, and running jobs.

``DmemServer`` owns all server state. It answers ``initialize`` without importing torch,
loads the model on the inference worker once the client is ``initialized`` (loading.py,
under work-done progress, progress.py), and runs every request as a job on that worker from
an async handler, so ``$/cancelRequest`` (or a newer completion for the same document)
reaches the job's stop flag while it runs. How it runs and leaves, saving memory however
the client goes, is lifecycle.py. The LSP handlers themselves are registered in
``features.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from dmem_lsp import __version__
from dmem_lsp.lsp.errors import RequestFailed, request_failure
from dmem_lsp.lsp.lifecycle import Lifecycle
from dmem_lsp.lsp.loading import STATUS, EngineLoading
from dmem_lsp.lsp.messages import as_json
from dmem_lsp.lsp.protocol import DmemProtocol
from dmem_lsp.lsp.pygls_internals import QuietExpectedErrors, keep_source, unread_source
from dmem_lsp.runtime.assist import Answer
from dmem_lsp.runtime.scheduling import KeyedDebouncer
from dmem_lsp.runtime.settings import ENGINE_KEYS, Settings, merge, parse_settings
from dmem_lsp.runtime.worker import Priority, Worker
from dmem_lsp.workspace.learning import Learner

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine

__all__ = ["DmemServer", "RequestFailed", "STATUS"]

log = logging.getLogger(__name__)

QUIET = QuietExpectedErrors()

MAX_UNOPENED_BYTES = 4 * 2**20
"""The largest file read from disk for a request about a document the editor did not open (4 MiB)."""


class DmemServer(EngineLoading, Lifecycle):
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
        self.learner = Learner(self)

    protocol: DmemProtocol

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

    def can_show_documents(self) -> bool:
        window = self.client_capabilities.window
        return bool(window and window.show_document and window.show_document.support)

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
            on_token = self.request_progress(name, token)
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
                self.end_progress(token, "cancelled")
                raise
            except Exception as error:
                raise request_failure(name, error) from error
            self.end_progress(token, f"{answer.tokens} tokens")
            return answer
        finally:
            self.forget_progress(token)
            if supersede is not None and self._latest.get(supersede) is task:
                del self._latest[supersede]

    # -- documents ----------------------------------------------------------------------

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
        if unread_source(document) is not None:  # open in the editor
            return document, document.source
        try:
            text = _read_regular_file(document.path if uri.startswith("file:") else None)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise JsonRpcInvalidParams(f"{uri} is not open in the editor and cannot be read: {error}") from error
        keep_source(document, text)  # pygls would read the file again on every access
        return document, text


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
