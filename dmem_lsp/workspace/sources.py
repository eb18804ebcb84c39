"""Where memory's texts come from: convention files, the user's edits, debugging steps.

- ``conventions``: convention files (``Policy.is_convention``) when a folder opens and when
  one changes on disk. A file counts as learned (its sha256 goes into ``sources``) only once
  its whole text is written, and ``sources`` is saved inside the state file, so a crash never
  leaves a file recorded that the state does not hold.
- ``edits``: the user's changes as unified diffs, debounced and coalesced per document (one
  ``KeyedDebouncer`` key per uri), and accepted completions;
- ``debug``: steps the editor sends (``dmem.rememberDebugStep``, ``dmem/debugStep``) and
  explanations asked about an error.

Every text passes the folder's policy (on a thread: nothing proportional to a file runs on
the event loop) and is framed by ``texts`` (shared with training) before ``Writer.write``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path, PurePosixPath
from typing import Any

from pygls.uris import to_fs_path

from dmem_lsp.runtime.scheduling import KeyedDebouncer
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.config import CONFIG_PATH
from dmem_lsp.workspace.folders import Folders, WorkspaceMemory
from dmem_lsp.workspace.host import Host
from dmem_lsp.workspace.policy import IGNORED_DIRECTORIES, Refusal, Verdict
from dmem_lsp.workspace.writer import Writer

__all__ = ["CONVENTION_DEPTH", "Sources"]

CONVENTION_DEPTH = texts.CONVENTION_DEPTH
"""Folder levels below the root searched for convention files when a folder opens."""


class Sources:
    """Turns convention files, edits and debugging steps into writes."""

    def __init__(self, host: Host, folders: Folders, writer: Writer) -> None:
        self.host, self.folders, self.writer = host, folders, writer
        self.edits: KeyedDebouncer[str] = KeyedDebouncer("a memory write")
        """Per document uri, the edit waiting for ``memory.editDebounceMs`` of quiet, and the
        edits being written (a ``didSave`` or a debounce began them): shutdown waits for them."""

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
        token = await self.host.begin_progress("dmem: learning the project's conventions", str(memory.root))
        try:
            for path in files:
                if budget <= 0:
                    reason = "over the conventions budget for this pass"
                    self.writer.skip(memory, memory.relative(path), "convention", reason)
                    continue
                budget -= await self.learn_convention(memory, path, budget)
                self.host.report_progress(token, memory.relative(path))
        finally:
            self.host.end_progress(token, "done")

    async def learn_convention(self, memory: WorkspaceMemory, path: Path, budget: int | None = None) -> int:
        source = memory.relative(path)
        verdict = await asyncio.to_thread(memory.policy.check_file, path)
        text, refusal = verdict
        if refusal is None and not memory.config.writes("conventions"):
            refusal = Refusal(f"{CONFIG_PATH.as_posix()} turns off writes to conventions")
        if refusal is not None:
            self.writer.skip(memory, source, "convention", refusal.reason)
            return 0
        assert text is not None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if memory.manifest["sources"].get(source) == digest:
            return 0
        limit = texts.convention_limit(memory.settings.convention_file_tokens, budget)
        text = texts.convention(source, text)
        written = await self.writer.write(memory, "conventions", text, source, "convention", limit, verdict.redacted)
        if written:  # learned only once all of it is in the state (saved with it)
            memory.manifest["sources"][source] = digest
        return written

    # -- edits ----------------------------------------------------------------------------

    def opened(self, uri: str, text: str) -> None:
        """The baseline the document's edits are diffed against, whether or not its folder is open yet."""
        memory = self.folders.folder_for(uri)
        if memory is not None:
            memory.snapshots.setdefault(uri, text)
        else:
            self.folders.baselines.setdefault(uri, text)

    def closed(self, uri: str) -> None:
        self.folders.baselines.pop(uri, None)

    def changed(self, uri: str) -> None:
        memory = self.folders.folder_for(uri)
        if memory is None:
            return
        delay = memory.settings.edit_debounce_ms / 1000
        self.edits.schedule(uri, delay, lambda: self._flush_edit(uri, False))

    async def flush_edit(self, uri: str, closing: bool = False) -> None:
        """Write the document's changes since its last write, as one diff. It goes on when the
        caller is cancelled, and ``shutdown`` waits for it: the client may quit meanwhile."""
        await self.edits.run(uri, lambda: self._flush_edit(uri, closing))

    async def _flush_edit(self, uri: str, closing: bool) -> None:
        self.edits.cancel(uri)
        memory = self.folders.folder_for(uri)
        if memory is None:
            return
        try:
            new = self.host.current_text(uri)
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
            self.writer.skip(memory, source, "edit", refusal.reason)
            return
        assert text is not None
        await self.writer.write(memory, "edits", texts.edit(source, text), source, "edit", redacted=verdict.redacted)

    def catch_up(self, memory: WorkspaceMemory) -> None:
        """Documents edited while the folder was not open yet: write their edits now."""
        for uri, text in list(memory.snapshots.items()):
            current = self.host.editor_text(uri)
            if current is not None and current != text and self.folders.folder_for(uri) is memory:
                self.changed(uri)

    async def accepted(self, uri: str, text: str) -> None:
        memory = self.folders.folder_for(uri)
        if memory is None or not memory.settings.enabled:
            return
        path = Path(to_fs_path(uri) or "")
        source = memory.relative(path)
        refusal = memory.policy.check_path(path)
        verdict = Verdict(None, refusal) if refusal else await asyncio.to_thread(memory.policy.check_text, text, source)
        checked, refusal = verdict
        if refusal is not None:
            self.writer.skip(memory, source, "accepted completion", refusal.reason)
            return
        assert checked is not None
        framed = texts.accepted_completion(source, checked)
        await self.writer.write(memory, "edits", framed, source, "accepted completion", redacted=verdict.redacted)

    # -- debugging ------------------------------------------------------------------------

    async def debug_step(self, uri: str | None, text: str, kind: str) -> dict[str, Any]:
        """Write a debugging step: ``{tokens}``, with ``reason`` when nothing was written, ``redacted`` when
        secrets were."""
        memory = self.folders.folder_for(uri) if uri else next(iter(self.folders.open.values()), None)
        if memory is None:
            return {"tokens": 0, "reason": self.folders.no_memory_reason(uri)}
        if not memory.settings.enabled:
            return {"tokens": 0, "reason": "memory.enabled is false: nothing is written"}
        source = memory.relative(Path(to_fs_path(uri) or "")) if uri else "editor"
        refusal = memory.policy.check_path(Path(to_fs_path(uri) or "")) if uri else None
        # a step is free text (a trace, a log), whichever file it was taken from: read it as such
        verdict = Verdict(None, refusal) if refusal else await asyncio.to_thread(memory.policy.check_text, text)
        checked, refusal = verdict
        if refusal is not None:
            self.writer.skip(memory, source, kind, refusal.reason)
            return {"tokens": 0, "reason": refusal.reason}
        assert checked is not None
        framed = texts.debug_step(kind, checked, source if uri else None)
        tokens = await self.writer.write(memory, "debug", framed, source, kind, redacted=verdict.redacted)
        if not tokens:  # write() refused it (read-only, the store is off) and logged why, last
            return {"tokens": 0, "reason": memory.manifest["audit"][-1].get("skipped", "nothing to write")}
        return {"tokens": tokens, **({"redacted": list(verdict.redacted)} if verdict.redacted else {})}
