"""The engine's life cycle: loading the model on the worker once the client is ``initialized``.

The load runs under work-done progress (a message where the client shows none) and says
where it is with ``dmem/status`` notifications. The adapter the first workspace folder's
``.dmem/config.toml`` names is attached first. A load that fails is said to the user, and
every request waiting for the engine is answered RequestFailed with the reason. Once the
engine is ready, each workspace folder's memory opens.

``EngineLoading`` is a part of ``DmemServer`` (server.py); it imports torch only on the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lsprotocol import types
from pygls.uris import to_fs_path

from dmem_lsp.lsp.errors import RequestFailed
from dmem_lsp.lsp.progress import Progress
from dmem_lsp.runtime.worker import Priority
from dmem_lsp.workspace.config import AdapterSource, WorkspaceConfigError, read_workspace_config

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine
    from dmem_lsp.runtime.settings import Settings
    from dmem_lsp.runtime.worker import Worker
    from dmem_lsp.workspace.learning import Learner

__all__ = ["EngineLoading", "STATUS"]

log = logging.getLogger(__name__)

STATUS = "dmem/status"
"""Notification: ``{state: loading|ready|error, message, model, device, quantization}``."""


class EngineLoading(Progress):
    """Loading the engine, saying so, and opening the workspace folders once it is ready."""

    settings: Settings
    worker: Worker
    learner: Learner

    engine: Engine | None
    loaded_with: Settings | None
    """The settings the engine was loaded with (None until it is)."""
    _engine_ready: asyncio.Future[Engine] | None
    _load_task: asyncio.Task[None] | None

    if TYPE_CHECKING:  # DmemServer's

        def show(self, kind: types.MessageType, message: str) -> None: ...

        async def pull_settings(self) -> None: ...

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

    def engine_ready(self) -> asyncio.Future[Engine]:
        if self._engine_ready is None:
            self._engine_ready = asyncio.get_running_loop().create_future()
        return self._engine_ready

    async def wait_for_engine(self) -> Engine:
        """The engine, once loaded; a RequestFailed with the load error if it did not load."""
        return await asyncio.shield(self.engine_ready())

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
            message = load_failure(error)
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


def _is_engine_error(error: BaseException) -> bool:
    return type(error).__name__ == "EngineError"


def load_failure(error: BaseException) -> str:
    """What the user is told when loading raised ``error``."""
    if _is_engine_error(error):
        return str(error)
    return f"unexpected {type(error).__name__}: {error}. Run `dmem-lsp doctor` and include its output in a bug report"


