"""Workspace memory in the running server: every folder's memory and the writes into it.

``Learner`` is the one object the server holds (``DmemServer.learner``). It is made with a
``Host`` (``host.py``: what it needs from the server) and puts together the parts that do
the work:

- ``folders``: one ``WorkspaceMemory`` per open folder, and which folder holds a document;
- ``sources``: convention files, the user's edits and debugging steps, as texts to write;
- ``writer``: writes on the inference worker, the audit log, ``dmem/memory`` notifications
  and (debounced) saves;
- ``commands``: resets, imports and terminal requests (a folder's status is ``status_page``'s);
- ``watch``: a watchdog observer for changes made outside the editor (``.gitignore`` and
  ``.dmemignore`` reload the policy, ``.dmem/config.toml`` reopens the folder, a convention
  file is learned again), debounced per path.

Here: opening a folder (its config and adapter, its files, its watches, then what it missed
and its conventions), closing one, and shutdown (the edits still waiting are written, those
being written waited for, then every folder saved and closed).
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsprotocol import types

from dmem_lsp.runtime.scheduling import KeyedDebouncer
from dmem_lsp.runtime.worker import Priority
from dmem_lsp.workspace.commands import Commands
from dmem_lsp.workspace.config import CONFIG_PATH, WorkspaceConfigError, read_workspace_config
from dmem_lsp.workspace.folders import Folders, WorkspaceMemory, open_files
from dmem_lsp.workspace.host import Host
from dmem_lsp.workspace.sources import CONVENTION_DEPTH, Sources
from dmem_lsp.workspace.status_page import LAST, memory_status
from dmem_lsp.workspace.watch import Watch
from dmem_lsp.workspace.writer import MEMORY_EVENT, Writer

if TYPE_CHECKING:
    from dmem_lsp.runtime.settings import MemorySettings

__all__ = ["CONVENTION_DEPTH", "Learner", "MEMORY_EVENT", "WorkspaceMemory", "log_failure", "looks_like_an_error"]

log = logging.getLogger(__name__)

ERROR_TEXT = re.compile(
    r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\berror\b|FAILED|panicked at", re.I
)

DISK_DEBOUNCE_S = 0.2
"""Quiet after a file's last event on disk before it is acted on (a burst of events is one change)."""


def looks_like_an_error(text: str) -> bool:
    return bool(ERROR_TEXT.search(text))


def log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a memory write failed", exc_info=task.exception())


class Learner:
    """Every workspace folder's memory, and the writes into it."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.registry = Folders()
        self.writer = Writer(host)
        self.sources = Sources(host, self.registry, self.writer)
        self.commands = Commands(host, self.writer)
        self.watch = Watch(self.on_disk_event)
        self._disk: KeyedDebouncer[Path] = KeyedDebouncer("acting on a file changed on disk")
        self._requests: set[Path] = set()

    @property
    def folders(self) -> dict[Path, WorkspaceMemory]:
        """The open folders' memories by resolved root."""
        return self.registry.open

    @property
    def settings(self) -> MemorySettings:
        return self.host.settings.memory

    # -- what the server calls ------------------------------------------------------------

    def folder_for(self, uri: str | None) -> WorkspaceMemory | None:
        return self.registry.folder_for(uri)

    def activate(self, memory: WorkspaceMemory | None) -> None:
        self.writer.activate(memory)

    def opened(self, uri: str, text: str) -> None:
        self.sources.opened(uri, text)

    def closed(self, uri: str) -> None:
        self.sources.closed(uri)

    def changed(self, uri: str) -> None:
        self.sources.changed(uri)

    async def flush_edit(self, uri: str, closing: bool = False) -> None:
        await self.sources.flush_edit(uri, closing)

    async def accepted(self, uri: str, text: str) -> None:
        await self.sources.accepted(uri, text)

    async def debug_step(self, uri: str | None, text: str, kind: str) -> dict[str, Any]:
        return await self.sources.debug_step(uri, text, kind)

    async def reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        await self.commands.reset(memory, stores, source)

    async def import_store(self, memory: WorkspaceMemory, snapshot: Path, source: str) -> str:
        return await self.commands.import_store(memory, snapshot, source)

    def status(self, memory: WorkspaceMemory, last: int = LAST) -> dict[str, Any]:
        return memory_status(memory, last)

    async def save(self, memory: WorkspaceMemory) -> bool:
        return await self.writer.save(memory)

    # -- folders --------------------------------------------------------------------------

    async def open(self, root: Path, snapshots: dict[str, str] | None = None) -> WorkspaceMemory | None:
        root = root.resolve()
        if root in self.folders or not root.is_dir():
            return self.folders.get(root)
        engine = self.host.engine
        assert engine is not None, "folders open once the engine is loaded"
        try:
            config, warnings = read_workspace_config(root, engine.memory.stores)
        except WorkspaceConfigError as error:
            self.refuse(root, str(error))
            return None
        for warning in warnings:
            self.host.show(types.MessageType.Warning, f"dmem-lsp: {warning}")
        try:
            job = self.host.worker.submit(lambda stop: engine.adapter(config.adapter), priority=Priority.REQUEST)
            adapter = await asyncio.wrap_future(job.future)
        except Exception as error:  # EngineError: not found, another backbone, another configuration
            self.refuse(root, str(error))
            return None
        self.registry.refused.pop(root, None)
        memory = WorkspaceMemory(root, config, adapter, lambda: self.settings)
        memory.snapshots.update(snapshots or {})
        baselines = self.registry.baselines
        for uri in [uri for uri in baselines if memory.holds(uri)]:
            memory.snapshots.setdefault(uri, baselines.pop(uri))
        notes = open_files(memory, engine)
        self.folders[root] = memory
        for note in notes:
            self.host.show(types.MessageType.Warning, f"dmem-lsp: {note}")
        if memory.read_only:
            self.host.show(
                types.MessageType.Warning,
                f"dmem-lsp: the memory of {root} is {memory.read_only_reason}; "
                "opened read-only: completions read it, nothing is written or saved",
            )
        else:
            await self.writer.save_manifest(memory)
        self.watch.start(memory)
        self.writer.notify(memory, "opened", readOnly=memory.read_only, problems=notes)
        self.sources.catch_up(memory)
        if not memory.read_only:
            for request in memory.files.pending_requests():
                await self.commands.carry_out(memory, request)
            if memory.settings.enabled:
                await self.sources.learn_conventions(memory)
        return memory

    def refuse(self, root: Path, reason: str) -> None:
        """The folder gets no memory (reads see zero state, nothing is written or saved)."""
        self.registry.refused[root] = reason
        self.host.show(types.MessageType.Error, f"dmem-lsp: no memory for {root}: {reason}")
        self.host.notify_client(
            MEMORY_EVENT, {"folder": root.as_uri(), "event": "refused", "reason": reason, "tokens": {}}
        )

    async def reopen(self, memory: WorkspaceMemory) -> None:
        """Close and open a folder again (its ``.dmem/config.toml`` changed)."""
        if not self.registry.is_open(memory):
            return
        await self.close(memory.root)
        # open documents' next edits are still diffs against what was last written
        await self.open(memory.root, snapshots=memory.snapshots)

    async def close(self, root: Path) -> None:
        memory = self.folders.pop(root.resolve(), None)
        if memory is None:
            return
        self.watch.stop(memory)
        await self.writer.save(memory)
        memory.files.release()

    async def shutdown(self) -> None:
        """Write the edits still waiting for their debounce, wait for those being written (a
        ``didSave`` just before the client quit), then save and close every folder."""
        await self.sources.edits.flush_all()
        self._disk.cancel_all()
        for root in list(self.folders):
            await self.close(root)
        self.watch.close()

    # -- files changed on disk ------------------------------------------------------------

    def on_disk_event(self, memory: WorkspaceMemory, path: Path, request: bool) -> None:
        """A file changed (event loop); act once the burst of events for it is over."""
        if not self.registry.is_open(memory):
            return
        if request:
            if path.suffix == ".json" and path.exists() and path not in self._requests:
                self._requests.add(path)
                task = asyncio.ensure_future(self.commands.carry_out(memory, path))
                task.add_done_callback(lambda done: self._requests.discard(path))
                task.add_done_callback(log_failure)
            return
        self._disk.schedule(path, DISK_DEBOUNCE_S, lambda: self.disk_changed(memory, path))

    async def disk_changed(self, memory: WorkspaceMemory, path: Path) -> None:
        if path.name in (".gitignore", ".dmemignore"):
            memory.policy.reload()
            return
        relative = memory.policy.relative(path)
        if relative is not None and relative.as_posix() == CONFIG_PATH.as_posix():
            log.info("%s changed: opening %s again", CONFIG_PATH, memory.root)
            await self.reopen(memory)
            return
        if (
            relative is None
            or not memory.policy.is_convention(relative)
            or not path.is_file()
            or not memory.settings.enabled
        ):
            return
        await self.sources.learn_convention(memory, path)
