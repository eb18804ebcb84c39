"""One keyed debouncer: the server's "do this once things are quiet" timers, written once.

``KeyedDebouncer.schedule(key, delay, make)`` runs ``make()`` (a coroutine factory) ``delay``
seconds from now, unless the same key is scheduled again first: then only the newest one
runs, ``delay`` after it was scheduled. A key is a document's uri (edits), a file's path (disk
events), a folder's memory (saves) or a request's supersede key (automatic completions).

``quiet(key, delay)`` is the same wait without work of its own: it returns once ``key`` has
been quiet for ``delay`` (an automatic completion waits so before it asks the model).
``run(key, make)`` runs now what was waiting for ``key`` (dropping the wait) and is awaited by
its caller; ``flush(key)`` runs a key's pending work now, and ``flush_all()`` every key's, then
waits for all work the debouncer started: what shutdown calls so nothing acknowledged is lost.
Work the debouncer starts is not cancelled by cancelling whoever awaits it (a write or a save
that began finishes); a failure is logged, never raised into the event loop.

Event loop only (not thread-safe); the loop is the running one when ``schedule`` is called.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["KeyedDebouncer"]

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

Factory = Callable[[], Awaitable[Any]]


async def _nothing() -> None:
    return None


class KeyedDebouncer(Generic[K]):
    """Per key, at most one pending piece of work, run once its key has been quiet for its delay."""

    def __init__(self, name: str = "work") -> None:
        self.name = name
        """What the work is, for the log ("a memory write failed" reads "{name} failed")."""
        self._pending: dict[K, tuple[asyncio.TimerHandle, Factory, asyncio.Future[Any]]] = {}
        self._running: set[asyncio.Future[Any]] = set()

    def schedule(self, key: K, delay: float, make: Factory) -> asyncio.Future[Any]:
        """Run ``make()`` after ``delay`` seconds unless ``key`` is scheduled again first.

        The future resolves with what ``make()`` returned; it is cancelled when the work is
        superseded or cancelled, and cancelling it cancels the wait (not work already running).
        """
        self.cancel(key)
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(max(delay, 0.0), self._fire, key)
        self._pending[key] = (timer, make, outcome)
        outcome.add_done_callback(lambda done: self._dropped(key, done))
        return outcome

    async def quiet(self, key: K, delay: float) -> None:
        """Return once ``key`` has been quiet for ``delay`` seconds; CancelledError when it is
        scheduled again first (a newer request for the same document supersedes this one)."""
        await self.schedule(key, delay, _nothing)

    def pending(self, key: K) -> bool:
        """Whether work for ``key`` is waiting for its delay."""
        return key in self._pending

    def keys(self) -> list[K]:
        """The keys with work waiting, oldest first."""
        return list(self._pending)

    def cancel(self, key: K) -> bool:
        """Drop the work waiting for ``key`` (its future is cancelled); whether there was any."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return False
        timer, _, outcome = entry
        timer.cancel()
        outcome.cancel()
        return True

    def cancel_all(self) -> None:
        for key in self.keys():
            self.cancel(key)

    async def run(self, key: K, make: Factory) -> Any:
        """Run ``make()`` now in place of what waits for ``key``, and await it (it finishes even if
        the caller is cancelled, and ``flush_all`` waits for it)."""
        self.cancel(key)
        return await asyncio.shield(self._start(make))

    async def flush(self, key: K) -> Any:
        """Run the work waiting for ``key`` now and await it; None when none was waiting."""
        entry = self._pending.pop(key, None)
        if entry is None:
            return None
        timer, make, outcome = entry
        timer.cancel()
        task = self._start(make, outcome)
        return await asyncio.shield(task)

    async def flush_all(self) -> None:
        """Run everything still waiting (one key after another), then wait for all work started.
        A failing piece is logged and the others still run."""
        for key in self.keys():
            try:
                await self.flush(key)
            except Exception:  # logged as it failed; one key failing is no reason to lose the others
                pass
        while self._running:
            await asyncio.wait(set(self._running))

    # -- internals ------------------------------------------------------------------------

    def _fire(self, key: K) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            _, make, outcome = entry
            self._start(make, outcome)

    def _start(self, make: Factory, outcome: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(make())
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(lambda done: self._finished(done, outcome))
        return task

    def _finished(self, task: asyncio.Future[Any], outcome: asyncio.Future[Any] | None) -> None:
        if task.cancelled():
            if outcome is not None and not outcome.done():
                outcome.cancel()
            return
        error = task.exception()
        if outcome is not None and not outcome.done():
            if error is not None:
                outcome.set_exception(error)
                outcome.exception()  # retrieved: it is logged here whether or not anyone awaits it
            else:
                outcome.set_result(task.result())
        if error is not None:
            log.error("%s failed", self.name, exc_info=error)

    def _dropped(self, key: K, outcome: asyncio.Future[Any]) -> None:
        """Whoever awaited the work gave up before it began: drop its wait."""
        entry = self._pending.get(key)
        if outcome.cancelled() and entry is not None and entry[2] is outcome:
            del self._pending[key]
            entry[0].cancel()
