"""Workspace memory in the running server: what is written where, and when.

One ``WorkspaceMemory`` per workspace folder holds that folder's states (float32, on the
CPU), its files (``store.WorkspaceStore``) and its write policy. The ``Learner`` owns them
all and turns events into write passes on the inference worker:

- ``conventions``: convention files (``Policy.is_convention``) when a folder opens and
  when one changes on disk (a watchdog observer; atomic saves arrive as moves);
- ``edits``: the user's changes as unified diffs, debounced and coalesced per document,
  and accepted completions;
- ``debug``: steps the editor sends (``dmem.rememberDebugStep``, ``dmem/debugStep``) and
  explanations asked about an error.

Writes are split into chunks of ``memory.writeChunkTokens`` that run one job each at
WRITE priority, so a completion waits behind at most one chunk. The model holds one set
of states at a time: every job first ``activate``s the states of the folder it serves.
Everything a write does or refuses goes into the folder's audit log and a ``dmem/memory``
notification. States are saved (debounced) after writes and on shutdown.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from lsprotocol import types
from pygls.uris import to_fs_path
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from . import assist
from .policy import IGNORED_DIRECTORIES, Policy, Refusal
from .store import AUDIT_LIMIT, StoreError, WorkspaceStore, _atomic_write, now, record_import, record_reset, state_sha256
from .workspace_config import CONFIG_PATH, WorkspaceConfig, WorkspaceConfigError, read_workspace_config
from .worker import Priority

if TYPE_CHECKING:
    from .engine import LoadedAdapter
    from .server import DmemServer
    from .settings import MemorySettings

__all__ = ["Learner", "WorkspaceMemory", "MEMORY_EVENT", "looks_like_an_error"]

log = logging.getLogger(__name__)

MEMORY_EVENT = "dmem/memory"
"""Notification: ``{folder, event: opened|refused|written|skipped|saved|reset|imported, store?, source?, ...}``."""

ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\berror\b|FAILED|panicked at", re.I)
CONVENTION_DEPTH = 3
"""Folder levels below the root searched for convention files when a folder opens."""


def looks_like_an_error(text: str) -> bool:
    return bool(ERROR_TEXT.search(text))


class WorkspaceMemory:
    """One workspace folder's memory: states, files, policy, adapter and editor snapshots."""

    def __init__(
        self, root: Path, config: WorkspaceConfig, adapter: "LoadedAdapter", user: "Callable[[], MemorySettings]"
    ) -> None:
        self.root = root.resolve()
        self.uri = self.root.as_uri()
        self.config = config
        """The folder's ``.dmem/config.toml`` (empty when it has none)."""
        self.adapter = adapter
        """The adapter this folder's states are written and read with."""
        self._user = user
        self.files = WorkspaceStore(self.root)
        self.policy = Policy(self.root, self.settings.max_file_bytes, config.ignore, config.conventions)
        self.states: dict[str, Any] = {}
        """{store: float32 [layers, heads, rank, rank]}; replaced (never changed in place) by worker jobs."""
        self.version = 0
        """Bumped whenever ``states`` change other than by a write in the model."""
        self.manifest: dict[str, Any] = {}
        self.read_only = False
        self.snapshots: dict[str, str] = {}
        """Text per open document as of its last write (edits are diffs against it)."""
        self._save: asyncio.TimerHandle | None = None
        self.saving = asyncio.Lock()
        """Held while a save runs: saves never overlap, so an older one cannot land after a newer one."""
        self.watches: list[Any] = []

    @property
    def settings(self) -> "MemorySettings":
        """The editor's memory settings with the folder's config laid over them."""
        return self.config.memory_settings(self._user())

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.adapter.fingerprint

    def relative(self, path: Path) -> str:
        relative = self.policy.relative(path)
        return str(relative) if relative is not None else str(path)


class _Watcher(FileSystemEventHandler):
    """Hands file events from the observer thread to the event loop."""

    def __init__(self, learner: "Learner", memory: WorkspaceMemory, requests: bool = False) -> None:
        self.learner, self.memory, self.requests = learner, memory, requests

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        if not self.requests and IGNORED_DIRECTORIES.intersection(Path(path).parts):
            return
        self.learner.loop.call_soon_threadsafe(self.learner.on_disk_event, self.memory, Path(path), self.requests)


class Learner:
    """Every workspace folder's memory, and the writes into it."""

    def __init__(self, server: "DmemServer") -> None:
        self.server = server
        self.folders: dict[Path, WorkspaceMemory] = {}
        self.active: tuple[WorkspaceMemory | None, int] | None = None
        """Whose states the model holds, and their version (touched only on the worker)."""
        self.observer: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._edits: dict[str, asyncio.TimerHandle] = {}
        self._disk: dict[Path, asyncio.TimerHandle] = {}
        self._requests: set[Path] = set()
        self.refused: dict[Path, str] = {}
        """Folders that got no memory, and why (their config or adapter cannot be used)."""

    @property
    def settings(self):
        return self.server.settings.memory

    # -- folders --------------------------------------------------------------------------

    def folder_for(self, uri: str | None) -> WorkspaceMemory | None:
        """The folder holding ``uri`` (the innermost one), or None: outside every folder."""
        if not uri or not uri.startswith("file:"):
            return None
        path = Path(to_fs_path(uri) or "").resolve()
        best = None
        for root, memory in self.folders.items():
            if (path == root or root in path.parents) and (best is None or len(root.parts) > len(best.root.parts)):
                best = memory
        return best

    async def open(self, root: Path, snapshots: dict[str, str] | None = None) -> WorkspaceMemory | None:
        root = root.resolve()
        if root in self.folders or not root.is_dir():
            return self.folders.get(root)
        self.loop = asyncio.get_running_loop()
        engine = self.server.engine
        try:
            config, warnings = read_workspace_config(root, engine.memory.stores)
        except WorkspaceConfigError as error:
            self.refuse(root, str(error))
            return None
        for warning in warnings:
            self.server.show(types.MessageType.Warning, f"dmem-lsp: {warning}")
        try:
            job = self.server.worker.submit(lambda stop: engine.adapter(config.adapter), priority=Priority.REQUEST)
            adapter = await asyncio.wrap_future(job.future)
        except Exception as error:  # EngineError: not found, another backbone, another configuration
            self.refuse(root, str(error))
            return None
        self.refused.pop(root, None)
        memory = WorkspaceMemory(root, config, adapter, lambda: self.settings)
        memory.snapshots.update(snapshots or {})
        files = memory.files
        memory.read_only = not files.acquire()
        memory.manifest = files.read_manifest() if not memory.read_only else _peek_manifest(files)
        states, problem = files.load_states(memory.fingerprint, move_aside=not memory.read_only)
        if problem:
            self.server.show(types.MessageType.Warning, f"dmem-lsp: {problem}")
            memory.manifest.update(tokens={}, sources={})
        if states is None:
            import torch

            config = engine.memory.config
            shape = (len(engine.memory.layers), config.state_heads, config.rank, config.rank)
            states = {store: torch.zeros(shape) for store in engine.memory.stores}
        memory.states = states
        memory.manifest.update(memory.fingerprint)
        self.folders[root] = memory
        if memory.read_only:
            self.server.show(
                types.MessageType.Warning,
                f"dmem-lsp: the memory of {root} is in use by another dmem-lsp ({files.holder()}); "
                "opened read-only: completions read it, nothing is written or saved",
            )
        else:
            files.write_manifest(memory.manifest)
        self._watch(memory)
        self.notify(memory, "opened", readOnly=memory.read_only)
        if not memory.read_only:
            for request in files.pending_requests():
                await self.carry_out(memory, request)
            if memory.settings.enabled:
                await self.learn_conventions(memory)
        return memory

    def refuse(self, root: Path, reason: str) -> None:
        """The folder gets no memory (reads see zero state, nothing is written or saved)."""
        self.refused[root] = reason
        self.server.show(types.MessageType.Error, f"dmem-lsp: no memory for {root}: {reason}")
        self.server.protocol.notify(MEMORY_EVENT, {"folder": root.as_uri(), "event": "refused", "reason": reason, "tokens": {}})

    async def reopen(self, memory: WorkspaceMemory) -> None:
        """Close and open a folder again (its ``.dmem/config.toml`` changed)."""
        if self.folders.get(memory.root) is not memory:
            return
        await self.close(memory.root)
        # open documents' next edits are still diffs against what was last written
        await self.open(memory.root, snapshots=memory.snapshots)

    async def close(self, root: Path) -> None:
        memory = self.folders.pop(root.resolve(), None)
        if memory is None:
            return
        for watch in memory.watches:
            self.observer.unschedule(watch)
        await self.save(memory)
        memory.files.release()

    def _watch(self, memory: WorkspaceMemory) -> None:
        if self.observer is None:
            self.observer = Observer()
            self.observer.daemon = True
            self.observer.start()
        memory.watches.append(self.observer.schedule(_Watcher(self, memory), str(memory.root), recursive=True))
        if not memory.read_only:
            memory.files.requests_dir.mkdir(parents=True, exist_ok=True)
            watcher = _Watcher(self, memory, requests=True)
            memory.watches.append(self.observer.schedule(watcher, str(memory.files.requests_dir), recursive=False))

    async def shutdown(self) -> None:
        for root in list(self.folders):
            await self.close(root)
        if self.observer is not None:
            self.observer.stop()

    # -- the model's states -----------------------------------------------------------------

    def activate(self, memory: WorkspaceMemory | None) -> None:
        """Give the model ``memory``'s states (zero outside every folder). Worker only."""
        key = (memory, memory.version if memory else 0)
        if self.active == key:
            return
        engine = self.server.engine
        if memory is None:
            engine.memory.reset()  # zero state: whichever adapter is in, the model reads nothing
        else:
            engine.use(memory.adapter)
            engine.memory.load_states(memory.states)
        self.active = key

    # -- writing --------------------------------------------------------------------------

    def notify(self, memory: WorkspaceMemory, event: str, **details: Any) -> None:
        tokens = memory.manifest.get("tokens", {})
        self.server.protocol.notify(MEMORY_EVENT, {"folder": memory.uri, "event": event, "tokens": dict(tokens), **details})

    def skip(self, memory: WorkspaceMemory, source: str, kind: str, reason: str) -> None:
        log.info("not writing %s (%s): %s", source, kind, reason)
        memory.manifest["audit"].append({"time": now(), "source": source, "kind": kind, "skipped": reason})
        self.schedule_save(memory)
        self.notify(memory, "skipped", source=source, kind=kind, reason=reason)

    async def write(
        self, memory: WorkspaceMemory, store: str, text: str, source: str, kind: str, limit: int | None = None
    ) -> int:
        """Write ``text`` into ``store`` of ``memory``, in chunks on the worker; the tokens written."""
        if memory.read_only:
            self.skip(memory, source, kind, f"read-only: the memory is in use by another dmem-lsp ({memory.files.holder()})")
            return 0
        if not memory.config.writes(store):
            self.skip(memory, source, kind, f"{CONFIG_PATH.as_posix()} turns off writes to {store}")
            return 0
        engine = await self.server.wait_for_engine()
        worker = self.server.worker
        ids = await asyncio.wrap_future(
            worker.submit(lambda stop: assist.tokenize_for_write(engine, text, limit), priority=Priority.WRITE).future
        )
        chunk = memory.settings.write_chunk_tokens
        for start in range(0, len(ids), chunk):
            piece = ids[start : start + chunk]

            def job(stop, piece=piece):
                self.activate(memory)
                memory.states = assist.write_memory(engine, store, piece)
                self.active = (memory, memory.version)

            await asyncio.wrap_future(worker.submit(job, priority=Priority.WRITE, name=f"write {store}").future)
        tokens = memory.manifest["tokens"]
        tokens[store] = tokens.get(store, 0) + len(ids)
        memory.manifest["audit"].append({"time": now(), "store": store, "source": source, "kind": kind, "tokens": len(ids)})
        self.notify(memory, "written", store=store, source=source, kind=kind, written=len(ids))
        self.schedule_save(memory)
        return len(ids)

    def schedule_save(self, memory: WorkspaceMemory) -> None:
        if memory.read_only or self.loop is None:
            return
        if memory._save is not None:
            memory._save.cancel()
        delay = memory.settings.save_debounce_ms / 1000
        memory._save = self.loop.call_later(delay, lambda: asyncio.ensure_future(self.save(memory)))

    async def save(self, memory: WorkspaceMemory) -> None:
        if memory.read_only:
            return
        if memory._save is not None:
            memory._save.cancel()
            memory._save = None
        async with memory.saving:
            # taken once the previous save is done: the states and manifest as they are now,
            # copied (writes go on changing the manifest on the event loop while the file is written)
            memory.manifest["audit"] = memory.manifest["audit"][-AUDIT_LIMIT:]
            states, manifest = memory.states, copy.deepcopy(memory.manifest)
            tokens = dict(manifest["tokens"])
            fingerprint = memory.fingerprint

            def save() -> None:
                memory.files.save_states(states, fingerprint, tokens)
                memory.files.write_manifest(manifest)

            await asyncio.get_running_loop().run_in_executor(None, save)
        self.notify(memory, "saved")

    # -- conventions ----------------------------------------------------------------------

    def convention_files(self, memory: WorkspaceMemory) -> list[Path]:
        found: list[Path] = []
        for folder, directories, files in os.walk(memory.root):
            depth = len(Path(folder).relative_to(memory.root).parts)
            directories[:] = sorted(d for d in directories if d not in IGNORED_DIRECTORIES and depth < CONVENTION_DEPTH)
            found.extend(
                Path(folder) / name for name in sorted(files) if memory.policy.is_convention(memory.policy.relative(Path(folder) / name))
            )
        return sorted(found, key=lambda p: (len(p.relative_to(memory.root).parts), str(p)))

    async def learn_conventions(self, memory: WorkspaceMemory) -> None:
        """Write the convention files that changed since they were last written."""
        files = self.convention_files(memory)
        if not files:
            return
        budget = memory.settings.convention_tokens
        token = await self.server.begin_progress("dmem: learning the project's conventions", str(memory.root))
        try:
            for path in files:
                if budget <= 0:
                    self.skip(memory, memory.relative(path), "convention", "over the conventions budget for this pass")
                    continue
                budget -= await self.learn_convention(memory, path, budget)
                self.server.report_progress(token, memory.relative(path))
        finally:
            self.server.end_progress(token, "done")

    async def learn_convention(self, memory: WorkspaceMemory, path: Path, budget: int | None = None) -> int:
        source = memory.relative(path)
        text, refusal = memory.policy.check_file(path)
        if refusal is None and not memory.config.writes("conventions"):
            refusal = Refusal(f"{CONFIG_PATH.as_posix()} turns off writes to conventions")
        if refusal is not None:
            self.skip(memory, source, "convention", refusal.reason)
            return 0
        digest = hashlib.sha256(text.encode()).hexdigest()
        if memory.manifest["sources"].get(source) == digest:
            return 0
        memory.manifest["sources"][source] = digest
        limit = min(memory.settings.convention_file_tokens, budget if budget is not None else 1 << 30)
        return await self.write(memory, "conventions", f"Project file {source}:\n{text}", source, "convention", limit)

    # -- files changed on disk ------------------------------------------------------------

    def on_disk_event(self, memory: WorkspaceMemory, path: Path, request: bool) -> None:
        """A file changed (event loop); act once the burst of events for it is over."""
        if memory.root not in self.folders or self.folders[memory.root] is not memory:
            return
        if request:
            if path.suffix == ".json" and path.exists() and path not in self._requests:
                self._requests.add(path)
                task = asyncio.ensure_future(self.carry_out(memory, path))
                task.add_done_callback(lambda done: (self._requests.discard(path), log_failure(done)))
            return
        handle = self._disk.pop(path, None)
        if handle is not None:
            handle.cancel()
        self._disk[path] = self.loop.call_later(0.2, lambda: self._spawn(self.disk_changed(memory, path)))

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        task.add_done_callback(log_failure)

    async def disk_changed(self, memory: WorkspaceMemory, path: Path) -> None:
        self._disk.pop(path, None)
        if path.name in (".gitignore", ".dmemignore"):
            memory.policy.reload()
            return
        relative = memory.policy.relative(path)
        if relative is not None and relative.as_posix() == CONFIG_PATH.as_posix():
            log.info("%s changed: opening %s again", CONFIG_PATH, memory.root)
            await self.reopen(memory)
            return
        if relative is None or not memory.policy.is_convention(relative) or not path.is_file() or not memory.settings.enabled:
            return
        await self.learn_convention(memory, path)

    # -- edits ----------------------------------------------------------------------------

    def opened(self, uri: str, text: str) -> None:
        memory = self.folder_for(uri)
        if memory is not None:
            memory.snapshots.setdefault(uri, text)

    def changed(self, uri: str) -> None:
        memory = self.folder_for(uri)
        if memory is None or self.loop is None:
            return
        handle = self._edits.pop(uri, None)
        if handle is not None:
            handle.cancel()
        delay = memory.settings.edit_debounce_ms / 1000
        self._edits[uri] = self.loop.call_later(delay, lambda: self._spawn(self.flush_edit(uri)))

    async def flush_edit(self, uri: str, closing: bool = False) -> None:
        """Write the document's changes since its last write, as one diff."""
        handle = self._edits.pop(uri, None)
        if handle is not None:
            handle.cancel()
        memory = self.folder_for(uri)
        if memory is None:
            return
        document = self.server.workspace.get_text_document(uri)
        try:
            new = document.source
        except OSError:
            return
        old = memory.snapshots.get(uri)
        memory.snapshots[uri] = new
        if closing:
            memory.snapshots.pop(uri, None)
        if old is None or old == new or not memory.settings.enabled:
            return
        path = Path(to_fs_path(uri) or "")
        source = memory.relative(path)
        refusal = memory.policy.check_path(path)
        if refusal is None:
            diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), source, source, n=2))
            text, refusal = memory.policy.check_text(diff)
        if refusal is not None:
            self.skip(memory, source, "edit", refusal.reason)
            return
        await self.write(memory, "edits", f"Edit to {source}:\n{text}", source, "edit")

    async def accepted(self, uri: str, text: str) -> None:
        memory = self.folder_for(uri)
        if memory is None or not memory.settings.enabled:
            return
        path = Path(to_fs_path(uri) or "")
        source = memory.relative(path)
        refusal = memory.policy.check_path(path)
        if refusal is None:
            text, refusal = memory.policy.check_text(text)
        if refusal is not None:
            self.skip(memory, source, "accepted completion", refusal.reason)
            return
        await self.write(memory, "edits", f"Accepted completion in {source}:\n{text}", source, "accepted completion")

    # -- debugging ------------------------------------------------------------------------

    async def debug_step(self, uri: str | None, text: str, kind: str) -> int:
        memory = self.folder_for(uri) if uri else next(iter(self.folders.values()), None)
        if memory is None or not memory.settings.enabled:
            return 0
        source = memory.relative(Path(to_fs_path(uri) or "")) if uri else "editor"
        if uri:
            refusal = memory.policy.check_path(Path(to_fs_path(uri) or ""))
            if refusal is not None:
                self.skip(memory, source, kind, refusal.reason)
                return 0
        checked, refusal = memory.policy.check_text(text)
        if refusal is not None:
            self.skip(memory, source, kind, refusal.reason)
            return 0
        where = f" in {source}" if uri else ""
        return await self.write(memory, "debug", f"Debugging step ({kind}){where}:\n{checked}", source, kind)

    # -- reset, import, status ------------------------------------------------------------

    async def reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        import torch

        def job(stop):
            states = dict(memory.states)
            for store in stores:
                states[store] = torch.zeros_like(states[store])
            memory.states = states
            memory.version += 1

        await asyncio.wrap_future(self.server.worker.submit(job, priority=Priority.REQUEST, name="reset").future)
        record_reset(memory.manifest, stores, source)
        await self.save(memory)
        self.notify(memory, "reset", stores=stores)

    async def import_store(self, memory: WorkspaceMemory, snapshot: Path, source: str) -> str:
        from .snapshots import check_fingerprint, read_snapshot

        store, tensor, fingerprint, tokens = read_snapshot(snapshot)
        check_fingerprint(snapshot, fingerprint, memory.fingerprint, "this folder's")

        def job(stop):
            memory.states = {**memory.states, store: tensor}
            memory.version += 1

        await asyncio.wrap_future(self.server.worker.submit(job, priority=Priority.REQUEST, name="import").future)
        record_import(memory.manifest, store, tokens, source)
        await self.save(memory)
        self.notify(memory, "imported", store=store)
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
                unknown = sorted(set(stores) - set(memory.states))
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
        _atomic_write(result_path, json.dumps(result).encode())
        path.unlink(missing_ok=True)

    def status(self, memory: WorkspaceMemory, last: int = 5) -> dict[str, Any]:
        files = memory.files
        stores = {}
        for store, tensor in memory.states.items():
            writes = [entry for entry in memory.manifest["audit"] if entry.get("store") == store]
            stores[store] = {
                "tokens": memory.manifest["tokens"].get(store, 0),
                "sha256": state_sha256(tensor),
                "lastWrites": writes[-last:],
            }
        return {
            "folder": memory.uri,
            "directory": str(files.dir),
            "readOnly": memory.read_only,
            "adapter": str(memory.adapter.source or "a fresh adapter (--adapter none)"),
            "config": str(memory.config.path) if memory.config.path else None,
            "fileBytes": files.state_path.stat().st_size if files.state_path.exists() else 0,
            "stores": stores,
            "skipped": [entry for entry in memory.manifest["audit"] if "skipped" in entry][-last:],
        }


def _peek_manifest(files: WorkspaceStore) -> dict[str, Any]:
    """The manifest as another server keeps it, without touching its files."""
    try:
        manifest = json.loads(files.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    manifest = manifest if isinstance(manifest, dict) else {}
    for key, empty in (("tokens", {}), ("sources", {}), ("audit", [])):
        manifest.setdefault(key, empty)
    return manifest


def log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a memory write failed", exc_info=task.exception())
