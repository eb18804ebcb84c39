"""Files changed outside the editor: a watchdog observer over every open folder.

The observer runs on its own thread; each event is handed to the event loop
(``call_soon_threadsafe``) as ``on_event(memory, path, requests)``. Two watches per writable
folder: the folder itself (recursive; events under ``IGNORED_DIRECTORIES`` are dropped, atomic
saves arrive as moves) and the memory's ``requests/`` folder, where terminal commands leave
their requests. What an event leads to (and its debounce) is the caller's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from dmem_lsp.workspace.folders import WorkspaceMemory
from dmem_lsp.workspace.policy import IGNORED_DIRECTORIES

__all__ = ["Watch"]

OnEvent = Callable[[WorkspaceMemory, Path, bool], None]


class _Handler(FileSystemEventHandler):
    """Hands file events from the observer thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event: OnEvent, memory: WorkspaceMemory, requests: bool):
        self.loop, self.on_event, self.memory, self.requests = loop, on_event, memory, requests

    def _inside(self, path: Path) -> tuple[str, ...]:
        """The folders between the watched folder and ``path``: only those can make it ignored (a
        project kept under ``~/.cache`` or ``~/build`` is still watched)."""
        relative = self.memory.policy.relative(path)
        return (relative or path).parts[:-1]  # not under the root (a link out): the whole path

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        path = os.fsdecode(event.dest_path if event.event_type == "moved" else event.src_path)
        if not self.requests and IGNORED_DIRECTORIES.intersection(self._inside(Path(path))):
            return
        self.loop.call_soon_threadsafe(self.on_event, self.memory, Path(path), self.requests)


class Watch:
    """One observer thread (started with the first folder) for every folder's watches."""

    def __init__(self, on_event: OnEvent) -> None:
        self.on_event = on_event
        self.observer: Any = None

    def start(self, memory: WorkspaceMemory) -> None:
        """Watch ``memory``'s folder, and its ``requests/`` unless it is read-only. Event loop only."""
        loop = asyncio.get_running_loop()
        if self.observer is None:
            self.observer = Observer()
            self.observer.daemon = True
            self.observer.start()
        handler = _Handler(loop, self.on_event, memory, requests=False)
        memory.watches.append(self.observer.schedule(handler, str(memory.root), recursive=True))
        if not memory.read_only:
            memory.files.requests_dir.mkdir(parents=True, exist_ok=True)
            handler = _Handler(loop, self.on_event, memory, requests=True)
            memory.watches.append(self.observer.schedule(handler, str(memory.files.requests_dir), recursive=False))

    def stop(self, memory: WorkspaceMemory) -> None:
        for watch in memory.watches:
            self.observer.unschedule(watch)

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
