"""Writing into a folder's memory on the inference worker, and saving it to disk.

``Writer.write`` turns a text that passed the policy into write passes: chunks of
``memory.writeChunkTokens``, one WRITE-priority job each, so a completion waits behind at
most one chunk. The model holds one set of states at a time: every job first ``activate``s
the states of the folder it serves. Everything a write does or refuses goes into the
folder's audit log and a ``dmem/memory`` notification (``MEMORY_EVENT``).

A reset wins over a write in progress: every store has an epoch, bumped by resets and
imports; a write whose store's epoch changed stops before its next chunk and is reported as
skipped. States are saved (debounced, one ``KeyedDebouncer`` key per folder) after writes and
on shutdown, one save at a time per folder, and a save that began is never cancelled. A save
that fails (a read-only directory, a full disk) is shown in the editor, once per reason, and
as an ``unsaved`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from lsprotocol import types

from dmem_lsp.runtime import assist
from dmem_lsp.runtime.scheduling import KeyedDebouncer
from dmem_lsp.runtime.worker import Priority
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.config import CONFIG_PATH
from dmem_lsp.workspace.folders import WorkspaceMemory, why
from dmem_lsp.workspace.host import Host
from dmem_lsp.workspace.manifest import now

__all__ = ["MEMORY_EVENT", "Writer"]

log = logging.getLogger(__name__)

MEMORY_EVENT = "dmem/memory"
"""Notification:
``{folder, event: opened|refused|written|skipped|saved|unsaved|reset|imported, store?, source?, ...}``."""


class Writer:
    """Writes, audit entries, notifications and saves, for every folder."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.saves: KeyedDebouncer[WorkspaceMemory] = KeyedDebouncer("saving the memory")
        """One pending save per folder (``memory.saveDebounceMs`` after its last write)."""
        self.active: tuple[WorkspaceMemory | None, int] | None = None
        """Whose states the model holds, and their version (touched only on the worker)."""

    # -- the model's states -----------------------------------------------------------------

    def activate(self, memory: WorkspaceMemory | None) -> None:
        """Give the model ``memory``'s states (zero outside every folder). Worker only."""
        key = (memory, memory.version if memory else 0)
        if self.active == key:
            return
        engine = self.host.engine
        assert engine is not None, "the engine is loaded before any job runs"
        if memory is None:
            engine.memory.reset()  # zero state: whichever adapter is in, the model reads nothing
        else:
            engine.use(memory.adapter)
            engine.memory.load_states(memory.states)
        self.active = key

    # -- telling ----------------------------------------------------------------------------

    def notify(self, memory: WorkspaceMemory, event: str, **details: Any) -> None:
        tokens = memory.manifest.get("tokens", {})
        self.host.notify_client(MEMORY_EVENT, {"folder": memory.uri, "event": event, "tokens": dict(tokens), **details})

    def skip(self, memory: WorkspaceMemory, source: str, kind: str, reason: str) -> None:
        log.info("not writing %s (%s): %s", source, kind, reason)
        memory.manifest["audit"].append({"time": now(), "source": source, "kind": kind, "skipped": reason})
        self.schedule_save(memory)
        self.notify(memory, "skipped", source=source, kind=kind, reason=reason)

    # -- writing ----------------------------------------------------------------------------

    async def write(
        self,
        memory: WorkspaceMemory,
        store: str,
        text: str,
        source: str,
        kind: str,
        limit: int | None = None,
        redacted: tuple[str, ...] = (),
    ) -> int:
        """Write ``text`` into ``store`` of ``memory``, in chunks on the worker; the tokens written.

        ``text`` has passed the policy; ``redacted`` names the secrets it redacted (for the audit log).
        """
        if memory.read_only:
            self.skip(memory, source, kind, f"read-only: the memory is {memory.read_only_reason}")
            return 0
        if not memory.config.writes(store):
            self.skip(memory, source, kind, f"{CONFIG_PATH.as_posix()} turns off writes to {store}")
            return 0
        epoch = memory.epochs.get(store, 0)
        engine = await self.host.wait_for_engine()
        worker = self.host.worker
        ids = await asyncio.wrap_future(
            worker.submit(lambda stop: assist.tokenize_for_write(engine, text, limit), priority=Priority.WRITE).future
        )
        chunk = memory.settings.write_chunk_tokens
        for piece in texts.chunks(ids, chunk):

            def job(stop: Any, piece: list[int] = piece) -> bool:
                if memory.epochs.get(store, 0) != epoch:
                    return False  # reset (or replaced) since this write began: the reset wins
                self.activate(memory)
                memory.states = assist.write_memory(engine, store, piece)
                self.active = (memory, memory.version)
                return True

            done = await asyncio.wrap_future(worker.submit(job, priority=Priority.WRITE, name=f"write {store}").future)
            if not done or memory.epochs.get(store, 0) != epoch:
                self.skip(memory, source, kind, f"{store} was reset or replaced while this was being written")
                return 0
            tokens = memory.manifest["tokens"]
            tokens[store] = tokens.get(store, 0) + len(piece)  # saved with the state that holds it
        entry = {"time": now(), "store": store, "source": source, "kind": kind, "tokens": len(ids)}
        details = {"redacted": list(redacted)} if redacted else {}
        memory.manifest["audit"].append({**entry, **details})
        self.notify(memory, "written", store=store, source=source, kind=kind, written=len(ids), **details)
        self.schedule_save(memory)
        return len(ids)

    # -- saving -----------------------------------------------------------------------------

    def schedule_save(self, memory: WorkspaceMemory) -> None:
        if memory.read_only:
            return
        self.saves.schedule(memory, memory.settings.save_debounce_ms / 1000, lambda: self.save(memory))

    async def save(self, memory: WorkspaceMemory) -> bool:
        """Save the states and the manifest; True when they are on disk. Not cancellable: a
        save that began finishes even when the request that asked for it is cancelled."""
        if memory.read_only:
            return False
        self.saves.cancel(memory)
        return bool(await asyncio.shield(asyncio.ensure_future(self._save_locked(memory))))

    async def _save_locked(self, memory: WorkspaceMemory) -> bool:
        async with memory.save_lock:
            return await self.write_files(memory)

    async def write_files(self, memory: WorkspaceMemory, manifest_only: bool = False) -> bool:
        """Write what memory holds now (hold ``save_lock``); a failure is told, not raised."""
        states, fingerprint = memory.states, memory.fingerprint
        manifest = json.loads(json.dumps(memory.manifest))  # as of now: writes go on meanwhile

        def save() -> None:
            if not manifest_only:
                memory.files.save_states(states, fingerprint, manifest["tokens"], manifest["sources"])
            memory.files.write_manifest(manifest)

        try:
            await asyncio.get_running_loop().run_in_executor(None, save)
        except OSError as error:
            self.not_saved(memory, error)
            return False
        if memory.unsaved is not None:
            memory.unsaved = None
            self.host.show(types.MessageType.Info, f"dmem-lsp: the memory of {memory.root} is saved again")
        if not manifest_only:
            self.notify(memory, "saved")
        return True

    async def save_manifest(self, memory: WorkspaceMemory) -> None:
        async with memory.save_lock:
            await self.write_files(memory, manifest_only=True)

    def not_saved(self, memory: WorkspaceMemory, error: OSError) -> None:
        """Tell the user, once per reason, that this folder's memory is not reaching the disk."""
        reason = why(error)
        log.error("cannot save the memory of %s in %s: %s", memory.root, memory.files.dir, reason)
        if memory.unsaved == reason:
            return
        memory.unsaved = reason
        self.host.show(
            types.MessageType.Error,
            f"dmem-lsp: the memory of {memory.root} is not being saved: {reason} ({memory.files.dir}). "
            "What it learns is kept until the server stops; free disk space or make that folder writable",
        )
        self.notify(memory, "unsaved", reason=reason)
