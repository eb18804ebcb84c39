"""Reset and import of a folder's memory in the running server.

Called for the editor's ``dmem.resetMemory`` and for the requests a terminal leaves in the
memory's ``requests/`` folder (``carry_out``; see ``dmem_lsp.cli.memory``). What a reset
zeroes and what an import checks are ``operations``' (shared with the terminal); here they
run on the inference worker. A folder's status is ``status_page``'s.

A reset or import wins over a write in progress: it bumps its stores' epochs on the worker,
so a write begun before stops before its next chunk. Neither is cancellable once begun,
and no save lands between changing the states and recording it (``save_lock``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from dmem_lsp.runtime.worker import Priority
from dmem_lsp.workspace import operations
from dmem_lsp.workspace.files import StoreError, atomic_write
from dmem_lsp.workspace.folders import WorkspaceMemory
from dmem_lsp.workspace.host import Host
from dmem_lsp.workspace.manifest import record_import, record_reset
from dmem_lsp.workspace.writer import Writer

__all__ = ["Commands"]


class Commands:
    """Resets, imports and terminal requests, for any open folder."""

    def __init__(self, host: Host, writer: Writer) -> None:
        self.host, self.writer = host, writer

    async def reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        """Zero ``stores`` and save; writes begun before stop (not cancellable once begun)."""
        await asyncio.shield(asyncio.ensure_future(self._reset(memory, stores, source)))

    async def _reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        import torch

        def job(stop: Any) -> None:
            memory.states = operations.zeroed(memory.states, stores, torch.zeros_like)
            for store in stores:
                memory.epochs[store] = memory.epochs.get(store, 0) + 1
            memory.version += 1

        async with memory.save_lock:  # no save between zeroing and recording it
            await asyncio.wrap_future(self.host.worker.submit(job, priority=Priority.REQUEST, name="reset").future)
            record_reset(memory.manifest, stores, source)
            self.writer.saves.cancel(memory)
            await self.writer.write_files(memory)
        self.writer.notify(memory, "reset", stores=stores)

    async def import_store(self, memory: WorkspaceMemory, snapshot: Path, source: str) -> str:
        from dmem_lsp.workspace.snapshots import check_fingerprint, read_snapshot

        store, tensor, fingerprint, tokens = read_snapshot(snapshot)
        check_fingerprint(snapshot, fingerprint, memory.fingerprint, "this folder's")
        operations.check_import(memory.states, snapshot, store, tensor)

        def job(stop: Any) -> None:
            memory.states = {**memory.states, store: tensor}
            memory.epochs[store] = memory.epochs.get(store, 0) + 1
            memory.version += 1

        async def replace() -> None:
            async with memory.save_lock:
                await asyncio.wrap_future(self.host.worker.submit(job, priority=Priority.REQUEST, name="import").future)
                record_import(memory.manifest, store, tokens, source)
                await self.writer.write_files(memory)

        await asyncio.shield(asyncio.ensure_future(replace()))
        self.writer.notify(memory, "imported", store=store)
        return store

    async def carry_out(self, memory: WorkspaceMemory, path: Path) -> None:
        """A request a terminal left in ``requests/`` (the CLI waits for the file to go)."""
        try:
            request = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # half-written or already carried out
        result_path = path.with_suffix(".done")
        try:
            if request.get("action") == "reset":
                stores = request.get("stores") or list(memory.states)
                unknown = operations.unknown_stores(memory.states, stores)
                if unknown:
                    raise StoreError(f"no such store: {', '.join(unknown)}")
                await self.reset(memory, stores, "dmem-lsp --reset-memory")
                result = {"ok": True, "message": f"reset {', '.join(stores)} (by the running server)"}
            elif request.get("action") == "import":
                store = await self.import_store(memory, Path(request["file"]), "dmem-lsp memory import")
                result = {"ok": True, "message": f"imported {store} (by the running server)"}
            else:
                raise StoreError(f"unknown request {request.get('action')!r}")
        except (StoreError, KeyError, ValueError) as error:
            result = {"ok": False, "message": str(error)}
        atomic_write(result_path, json.dumps(result).encode())
        path.unlink(missing_ok=True)
