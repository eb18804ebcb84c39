"""The demo's LSP client: the real server as a subprocess, and what it sends, as it comes.

``DemoClient`` is pygls' ``LanguageClient`` keeping every ``dmem/status`` and ``dmem/memory``
notification (each memory event printed as it arrives, ``describe``) and waiting on them with a
deadline (``wait_for``, never a sleep); ``written`` and ``saved_after`` read the events.
``forward`` copies the server's stderr onto ours, ``end`` stops it (SIGTERM: it saves, then
SIGKILL). ``say`` prints a step to stdout; ``DemoError`` ends the demo with its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from dmem_lsp.lsp.protocol import as_json
from dmem_lsp.lsp.server import STATUS
from dmem_lsp.workspace.learning import MEMORY_EVENT

__all__ = ["TIMEOUT", "DemoClient", "DemoError", "describe", "end", "forward", "saved_after", "say", "written"]

log = logging.getLogger(__name__)

TIMEOUT = 300.0
"""Seconds any one wait on the server may take (it imports torch and loads the model)."""


class DemoError(Exception):
    """The demo cannot go on (the message says why)."""


def say(text: str = "") -> None:
    print(text, flush=True)


class DemoClient(LanguageClient):
    """An LSP client that shows the server's ``dmem/memory`` events as they come."""

    def __init__(self) -> None:
        super().__init__("dmem-lsp-demo", "1")
        self.statuses: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

        @self.feature(STATUS)
        def on_status(client: LanguageClient, params: Any) -> None:
            self.statuses.append(as_json(params))
            self.changed.set()

        @self.feature(MEMORY_EVENT)
        def on_memory(client: LanguageClient, params: Any) -> None:
            event = as_json(params)
            self.events.append(event)
            self.changed.set()
            shown = describe(event)
            if shown:
                say(f"      dmem/memory: {shown}")

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def on_message(client: LanguageClient, params: types.ShowMessageParams) -> None:
            level = logging.WARNING if params.type <= types.MessageType.Warning else logging.INFO
            log.log(level, "server: %s", params.message)

        @self.feature(types.WINDOW_LOG_MESSAGE)
        def on_log(client: LanguageClient, params: types.LogMessageParams) -> None:
            log.info("server: %s", params.message)

    async def wait_for(self, what: str, match: Callable[[list], Any], timeout: float = TIMEOUT) -> Any:
        """The first truthy ``match(...)`` of what was received so far, waiting for more."""
        deadline = time.monotonic() + timeout
        while True:
            found = match(self)
            if found:
                return found
            if self.stopped:
                raise DemoError(f"the server exited while the demo waited for {what} (its log is above)")
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"no {what} from the server within {timeout:.0f} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))

    async def server_exit(self, server: asyncio.subprocess.Process) -> None:
        self.changed.set()


def describe(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "written":
        return f"written {event.get('source')} into {event.get('store')} ({event.get('written')} tokens)"
    if kind == "saved":
        tokens = ", ".join(f"{store} {n}" for store, n in sorted(event.get("tokens", {}).items()) if n)
        return f"saved to disk (tokens: {tokens or 'none'})"
    if kind == "reset":
        return f"reset {', '.join(event.get('stores', []))}"
    if kind in ("skipped", "refused", "unsaved"):
        return f"{kind} {event.get('source', '')}: {event.get('reason', '')}".replace("  ", " ")
    return ""


def written(events: list[dict[str, Any]], source: str) -> bool:
    return any(e.get("event") == "written" and e.get("source") == source for e in events)


def saved_after(events: list[dict[str, Any]]) -> bool:
    last_write = max((i for i, e in enumerate(events) if e.get("event") == "written"), default=None)
    return last_write is not None and any(e.get("event") == "saved" for e in events[last_write:])


async def forward(stream: asyncio.StreamReader) -> None:
    """The server's stderr (its log) onto ours, line by line, until it closes."""
    while line := await stream.readline():
        sys.stderr.buffer.write(line)
        sys.stderr.flush()


async def end(process: asyncio.subprocess.Process) -> None:
    """Stop ``process`` if it still runs: SIGTERM (the server saves), then SIGKILL."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
