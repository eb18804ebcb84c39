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
notification. States are saved (debounced) after writes and on shutdown, one save at a
time per folder, and a save that began is never cancelled (the client going away, a reset).

A reset wins over a write in progress: every store has an epoch, bumped by resets and
imports; a write whose store's epoch changed stops before its next chunk and is reported
as skipped. A convention file counts as learned (its sha256 goes into ``sources``) only
once its whole text is written, and ``sources`` is saved inside the state file, so a crash
never leaves a file recorded that the state does not hold. A save that fails (a read-only
directory, a full disk) is shown in the editor, once per reason, and as an ``unsaved`` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from lsprotocol import types
from pygls.uris import to_fs_path
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from dmem_lsp.runtime import assist
from dmem_lsp.runtime.worker import Priority
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.config import CONFIG_PATH, WorkspaceConfig, WorkspaceConfigError, read_workspace_config
from dmem_lsp.workspace.files import StoreError, atomic_write
from dmem_lsp.workspace.manifest import now, record_import, record_reset
from dmem_lsp.workspace.policy import IGNORED_DIRECTORIES, Policy, Refusal, Verdict
from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.store import WorkspaceStore

if TYPE_CHECKING:
    from dmem_lsp.lsp.server import DmemServer
    from dmem_lsp.runtime.engine import LoadedAdapter
    from dmem_lsp.runtime.settings import MemorySettings

__all__ = ["Learner", "WorkspaceMemory", "MEMORY_EVENT", "looks_like_an_error"]

log = logging.getLogger(__name__)

MEMORY_EVENT = "dmem/memory"
"""Notification:
``{folder, event: opened|refused|written|skipped|saved|unsaved|reset|imported, store?, source?, ...}``."""

ERROR_TEXT = re.compile(
    r"Traceback \(most recent call last\)|\b\w*(Error|Exception)\b|\berror\b|FAILED|panicked at", re.I
)
CONVENTION_DEPTH = texts.CONVENTION_DEPTH
"""Folder levels below the root searched for convention files when a folder opens."""


def looks_like_an_error(text: str) -> bool:
    return bool(ERROR_TEXT.search(text))


class WorkspaceMemory:
    """One workspace folder's memory: states, files, policy, adapter and editor snapshots."""

    def __init__(
        self, root: Path, config: WorkspaceConfig, adapter: LoadedAdapter, user: Callable[[], MemorySettings]
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
        self.read_only_reason = ""
        """Why nothing is written or saved here (another server holds the lock, the directory cannot be written)."""
        self.unsaved: str | None = None
        """Why the last save failed (None: it did not); the user has been told."""
        self.epochs: dict[str, int] = {}
        """Per store, bumped by resets and imports (worker only): a write begun before stops."""
        self.snapshots: dict[str, str] = {}
        """Text per open document as of its last write (edits are diffs against it)."""
        self._save: asyncio.TimerHandle | None = None
        self.save_lock = asyncio.Lock()
        """Held while the files are written, and across a reset or import and its save."""
        self.watches: list[Any] = []

    @property
    def settings(self) -> MemorySettings:
        """The editor's memory settings with the folder's config laid over them."""
        return self.config.memory_settings(self._user())

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.adapter.fingerprint

    def relative(self, path: Path) -> str:
        """The name of ``path`` in the folder, as the folder lists it (a link by its own name, not its target's)."""
        try:
            return Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            relative = self.policy.relative(path)
            return str(relative) if relative is not None else str(path)


class _Watcher(FileSystemEventHandler):
    """Hands file events from the observer thread to the event loop."""

    def __init__(self, learner: Learner, memory: WorkspaceMemory, requests: bool = False) -> None:
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

    def __init__(self, server: DmemServer) -> None:
        self.server = server
        self.folders: dict[Path, WorkspaceMemory] = {}
        self.active: tuple[WorkspaceMemory | None, int] | None = None
        """Whose states the model holds, and their version (touched only on the worker)."""
        self.observer: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._edits: dict[str, asyncio.TimerHandle] = {}
        self._writing: set[asyncio.Future[Any]] = set()
        """Edits being written (a ``didSave`` or a debounce began them): shutdown waits for them."""
        self._disk: dict[Path, asyncio.TimerHandle] = {}
        self._requests: set[Path] = set()
        self.baselines: dict[str, str] = {}
        """Text of documents opened before their folder's memory was (the model was loading)."""
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
        for uri in [uri for uri in self.baselines if self._holds(memory, uri)]:
            memory.snapshots.setdefault(uri, self.baselines.pop(uri))
        notes = self._open_files(memory)
        self.folders[root] = memory
        for note in notes:
            self.server.show(types.MessageType.Warning, f"dmem-lsp: {note}")
        if memory.read_only:
            self.server.show(
                types.MessageType.Warning,
                f"dmem-lsp: the memory of {root} is {memory.read_only_reason}; "
                "opened read-only: completions read it, nothing is written or saved",
            )
        else:
            await self.save_manifest(memory)
        self._watch(memory)
        self.notify(memory, "opened", readOnly=memory.read_only, problems=notes)
        self._catch_up(memory)
        if not memory.read_only:
            for request in memory.files.pending_requests():
                await self.carry_out(memory, request)
            if memory.settings.enabled:
                await self.learn_conventions(memory)
        return memory

    def _open_files(self, memory: WorkspaceMemory) -> list[str]:
        """Take the lock, clean up after kills, load the state and manifest; what was wrong."""
        import torch

        files, engine = memory.files, self.server.engine
        try:
            if not files.acquire():
                memory.read_only, memory.read_only_reason = True, f"in use by another dmem-lsp ({files.holder()})"
        except OSError as error:
            memory.read_only, memory.read_only_reason = True, f"in {files.dir}, which cannot be written ({_why(error)})"
        if not memory.read_only:
            removed = files.clean_temporary_files()
            if removed:
                log.info("%s: removed %d temporary files of interrupted saves", files.dir, len(removed))
        try:
            saved, notes = files.open_states(memory.fingerprint, move_aside=not memory.read_only)
        except OSError as error:  # the directory cannot be written: the bad file stays
            saved, notes = (
                None,
                [f"the saved memory of {memory.root} cannot be used and cannot be moved aside ({_why(error)})"],
            )
        manifest, problem = files.read_manifest(move_aside=not memory.read_only)
        if problem:
            notes.append(f"{problem}; what memory holds is read from the state file")
        config = engine.memory.config
        shape = (len(engine.memory.layers), config.state_heads, config.rank, config.rank)
        if saved is not None and (
            set(saved.states) != set(engine.memory.stores)
            or any(tuple(t.shape) != shape for t in saved.states.values())
        ):
            notes.append(
                f"{files.state_path} holds stores {', '.join(sorted(saved.states))} of another shape than "
                f"{', '.join(engine.memory.stores)} {list(shape)}; memory starts empty"
            )
            saved = None
        if saved is None:
            memory.states = {store: torch.zeros(shape) for store in engine.memory.stores}
            manifest.update(tokens={}, sources={})  # nothing saved: nothing is held
        else:
            memory.states = saved.states
            manifest["tokens"] = dict(saved.tokens)
            if saved.version != "1":  # older states kept their sources in the manifest only
                manifest["sources"] = dict(saved.sources)
        manifest.update(memory.fingerprint)
        memory.manifest = manifest
        return notes

    @staticmethod
    def _holds(memory: WorkspaceMemory, uri: str) -> bool:
        path = Path(to_fs_path(uri) or "").resolve() if uri.startswith("file:") else None
        return path is not None and (path == memory.root or memory.root in path.parents)

    def _catch_up(self, memory: WorkspaceMemory) -> None:
        """Documents edited while the folder was not open yet: write their edits now."""
        for uri, text in list(memory.snapshots.items()):
            document = self.server.workspace.text_documents.get(uri)
            if document is not None and document.source != text and self.folder_for(uri) is memory:
                self.changed(uri)

    def refuse(self, root: Path, reason: str) -> None:
        """The folder gets no memory (reads see zero state, nothing is written or saved)."""
        self.refused[root] = reason
        self.server.show(types.MessageType.Error, f"dmem-lsp: no memory for {root}: {reason}")
        self.server.protocol.notify(
            MEMORY_EVENT, {"folder": root.as_uri(), "event": "refused", "reason": reason, "tokens": {}}
        )

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
        """Write the edits still waiting for their debounce, wait for those being written (a
        ``didSave`` just before the client quit), then save and close every folder."""
        for uri in list(self._edits):
            try:
                await self.flush_edit(uri)
            except Exception:  # one document failing is no reason to lose the others
                log.exception("could not write the last edit of %s", uri)
        while self._writing:
            await asyncio.wait(set(self._writing))  # each one logs its own failure
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
        self.server.protocol.notify(
            MEMORY_EVENT, {"folder": memory.uri, "event": event, "tokens": dict(tokens), **details}
        )

    def skip(self, memory: WorkspaceMemory, source: str, kind: str, reason: str) -> None:
        log.info("not writing %s (%s): %s", source, kind, reason)
        memory.manifest["audit"].append({"time": now(), "source": source, "kind": kind, "skipped": reason})
        self.schedule_save(memory)
        self.notify(memory, "skipped", source=source, kind=kind, reason=reason)

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
        engine = await self.server.wait_for_engine()
        worker = self.server.worker
        ids = await asyncio.wrap_future(
            worker.submit(lambda stop: assist.tokenize_for_write(engine, text, limit), priority=Priority.WRITE).future
        )
        chunk = memory.settings.write_chunk_tokens
        for piece in texts.chunks(ids, chunk):

            def job(stop, piece=piece) -> bool:
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

    def schedule_save(self, memory: WorkspaceMemory) -> None:
        if memory.read_only or self.loop is None:
            return
        if memory._save is not None:
            memory._save.cancel()
        delay = memory.settings.save_debounce_ms / 1000
        memory._save = self.loop.call_later(delay, lambda: self._spawn(self.save(memory)))

    async def save(self, memory: WorkspaceMemory) -> bool:
        """Save the states and the manifest; True when they are on disk. Not cancellable: a
        save that began finishes even when the request that asked for it is cancelled."""
        if memory.read_only:
            return False
        if memory._save is not None:
            memory._save.cancel()
            memory._save = None
        return await asyncio.shield(asyncio.ensure_future(self._save_locked(memory)))

    async def _save_locked(self, memory: WorkspaceMemory) -> bool:
        async with memory.save_lock:
            return await self._write_files(memory)

    async def _write_files(self, memory: WorkspaceMemory, manifest_only: bool = False) -> bool:
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
            self.server.show(types.MessageType.Info, f"dmem-lsp: the memory of {memory.root} is saved again")
        if not manifest_only:
            self.notify(memory, "saved")
        return True

    async def save_manifest(self, memory: WorkspaceMemory) -> None:
        async with memory.save_lock:
            await self._write_files(memory, manifest_only=True)

    def not_saved(self, memory: WorkspaceMemory, error: OSError) -> None:
        """Tell the user, once per reason, that this folder's memory is not reaching the disk."""
        reason = _why(error)
        log.error("cannot save the memory of %s in %s: %s", memory.root, memory.files.dir, reason)
        if memory.unsaved == reason:
            return
        memory.unsaved = reason
        self.server.show(
            types.MessageType.Error,
            f"dmem-lsp: the memory of {memory.root} is not being saved: {reason} ({memory.files.dir}). "
            "What it learns is kept until the server stops; free disk space or make that folder writable",
        )
        self.notify(memory, "unsaved", reason=reason)

    # -- conventions ----------------------------------------------------------------------

    def convention_files(self, memory: WorkspaceMemory) -> list[Path]:
        found: list[Path] = []
        for folder, directories, files in os.walk(memory.root):
            depth = len(Path(folder).relative_to(memory.root).parts)
            directories[:] = sorted(d for d in directories if d not in IGNORED_DIRECTORIES and depth < CONVENTION_DEPTH)
            # by the name in the folder, not the target: a link that leads outside is refused when it is read
            found.extend(
                Path(folder) / name
                for name in sorted(files)
                if memory.policy.is_convention(PurePosixPath((Path(folder) / name).relative_to(memory.root).as_posix()))
            )
        return sorted(found, key=lambda p: texts.convention_order(p.relative_to(memory.root).as_posix()))

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
        verdict = await asyncio.to_thread(memory.policy.check_file, path)
        text, refusal = verdict
        if refusal is None and not memory.config.writes("conventions"):
            refusal = Refusal(f"{CONFIG_PATH.as_posix()} turns off writes to conventions")
        if refusal is not None:
            self.skip(memory, source, "convention", refusal.reason)
            return 0
        digest = hashlib.sha256(text.encode()).hexdigest()
        if memory.manifest["sources"].get(source) == digest:
            return 0
        limit = texts.convention_limit(memory.settings.convention_file_tokens, budget)
        text = texts.convention(source, text)
        written = await self.write(memory, "conventions", text, source, "convention", limit, verdict.redacted)
        if written:  # learned only once all of it is in the state (saved with it)
            memory.manifest["sources"][source] = digest
        return written

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
        if (
            relative is None
            or not memory.policy.is_convention(relative)
            or not path.is_file()
            or not memory.settings.enabled
        ):
            return
        await self.learn_convention(memory, path)

    # -- edits ----------------------------------------------------------------------------

    def opened(self, uri: str, text: str) -> None:
        """The baseline the document's edits are diffed against, whether or not its folder is open yet."""
        memory = self.folder_for(uri)
        if memory is not None:
            memory.snapshots.setdefault(uri, text)
        else:
            self.baselines.setdefault(uri, text)

    def closed(self, uri: str) -> None:
        self.baselines.pop(uri, None)

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
        """Write the document's changes since its last write, as one diff. It goes on when the
        caller is cancelled, and ``shutdown`` waits for it: the client may quit meanwhile."""
        task = asyncio.ensure_future(self._flush_edit(uri, closing))
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        task.add_done_callback(log_failure)
        await asyncio.shield(task)

    async def _flush_edit(self, uri: str, closing: bool) -> None:
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
        policy = memory.policy

        def check() -> Verdict:  # on a thread: nothing proportional to the document runs on the event loop
            refusal = policy.check_path(path) or policy.check_document(new) or policy.check_document(old)
            if refusal is not None:  # binary or over the cap: refused before any diff is computed
                return Verdict(None, refusal)
            return policy.check_text(texts.diff(source, old, new), source)

        verdict = await asyncio.to_thread(check)
        text, refusal = verdict
        if refusal is not None:
            self.skip(memory, source, "edit", refusal.reason)
            return
        await self.write(memory, "edits", texts.edit(source, text), source, "edit", redacted=verdict.redacted)

    async def accepted(self, uri: str, text: str) -> None:
        memory = self.folder_for(uri)
        if memory is None or not memory.settings.enabled:
            return
        path = Path(to_fs_path(uri) or "")
        source = memory.relative(path)
        refusal = memory.policy.check_path(path)
        verdict = Verdict(None, refusal) if refusal else await asyncio.to_thread(memory.policy.check_text, text, source)
        text, refusal = verdict
        if refusal is not None:
            self.skip(memory, source, "accepted completion", refusal.reason)
            return
        text = texts.accepted_completion(source, text)
        await self.write(memory, "edits", text, source, "accepted completion", redacted=verdict.redacted)

    # -- debugging ------------------------------------------------------------------------

    async def debug_step(self, uri: str | None, text: str, kind: str) -> dict[str, Any]:
        """Write a debugging step: ``{tokens}``, with ``reason`` when nothing was written, ``redacted`` when
        secrets were."""
        memory = self.folder_for(uri) if uri else next(iter(self.folders.values()), None)
        if memory is None:
            return {"tokens": 0, "reason": self.no_memory_reason(uri)}
        if not memory.settings.enabled:
            return {"tokens": 0, "reason": "memory.enabled is false: nothing is written"}
        source = memory.relative(Path(to_fs_path(uri) or "")) if uri else "editor"
        refusal = memory.policy.check_path(Path(to_fs_path(uri) or "")) if uri else None
        # a step is free text (a trace, a log), whichever file it was taken from: read it as such
        verdict = Verdict(None, refusal) if refusal else await asyncio.to_thread(memory.policy.check_text, text)
        checked, refusal = verdict
        if refusal is not None:
            self.skip(memory, source, kind, refusal.reason)
            return {"tokens": 0, "reason": refusal.reason}
        text = texts.debug_step(kind, checked, source if uri else None)
        tokens = await self.write(memory, "debug", text, source, kind, redacted=verdict.redacted)
        if not tokens:  # write() refused it (read-only, the store is off) and logged why, last
            return {"tokens": 0, "reason": memory.manifest["audit"][-1].get("skipped", "nothing to write")}
        return {"tokens": tokens, **({"redacted": list(verdict.redacted)} if verdict.redacted else {})}

    def no_memory_reason(self, uri: str | None) -> str:
        """Why a document (or the editor, ``uri`` None) has no memory to write into."""
        if not uri:
            for root, reason in self.refused.items():
                return f"no memory for {root}: {reason}"
            return "no workspace folder is open (memory is kept per folder)"
        if not uri.startswith("file:"):
            return f"{uri} is not a file in a workspace folder: it uses no memory"
        path = Path(to_fs_path(uri) or "").resolve()
        for root, reason in self.refused.items():
            if path == root or root in path.parents:
                return f"no memory for {root}: {reason}"
        return f"{uri} is outside every workspace folder: documents there use no memory"

    # -- reset, import, status ------------------------------------------------------------

    async def reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        """Zero ``stores`` and save; writes begun before stop (not cancellable once begun)."""
        await asyncio.shield(asyncio.ensure_future(self._reset(memory, stores, source)))

    async def _reset(self, memory: WorkspaceMemory, stores: list[str], source: str) -> None:
        import torch

        def job(stop):
            states = dict(memory.states)
            for store in stores:
                states[store] = torch.zeros_like(states[store])
                memory.epochs[store] = memory.epochs.get(store, 0) + 1
            memory.states = states
            memory.version += 1

        async with memory.save_lock:  # no save between zeroing and recording it
            await asyncio.wrap_future(self.server.worker.submit(job, priority=Priority.REQUEST, name="reset").future)
            record_reset(memory.manifest, stores, source)
            if memory._save is not None:
                memory._save.cancel()
                memory._save = None
            await self._write_files(memory)
        self.notify(memory, "reset", stores=stores)

    async def import_store(self, memory: WorkspaceMemory, snapshot: Path, source: str) -> str:
        from dmem_lsp.workspace.snapshots import check_fingerprint, read_snapshot

        store, tensor, fingerprint, tokens = read_snapshot(snapshot)
        check_fingerprint(snapshot, fingerprint, memory.fingerprint, "this folder's")

        if store not in memory.states or tuple(memory.states[store].shape) != tuple(tensor.shape):
            raise StoreError(f"{snapshot} holds store {store!r} of another shape; not imported")

        def job(stop):
            memory.states = {**memory.states, store: tensor}
            memory.epochs[store] = memory.epochs.get(store, 0) + 1
            memory.version += 1

        async def replace() -> None:
            async with memory.save_lock:
                await asyncio.wrap_future(
                    self.server.worker.submit(job, priority=Priority.REQUEST, name="import").future
                )
                record_import(memory.manifest, store, tokens, source)
                await self._write_files(memory)

        await asyncio.shield(asyncio.ensure_future(replace()))
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
        atomic_write(result_path, json.dumps(result).encode())
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


def _why(error: OSError) -> str:
    """An OSError as a user reads it: "Read-only file system", "No space left on device"."""
    return (error.strerror or str(error)) if isinstance(error, OSError) else str(error)


def log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a memory write failed", exc_info=task.exception())
