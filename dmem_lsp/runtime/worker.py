"""The inference worker: one thread that runs every job touching the model, by priority.

The model is not thread-safe and a GPU runs one thing at a time anyway, so loading,
completions, explanations and (later) memory writes all run here, never on pygls'
reader pool and never on the event loop. A job gets a ``should_stop`` callable that a
long job checks between steps; ``Job.cancel`` sets it, so a running generation stops
within one decoding step and a queued one never starts. Higher-priority jobs (requests)
go before lower ones (memory writes); jobs of one priority run in submission order.
"""

from __future__ import annotations

import enum
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["Job", "Priority", "Worker"]

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    LOAD = 0
    REQUEST = 1
    WRITE = 2


class Job:
    """A unit of work on the worker: its result arrives in ``future``."""

    def __init__(self, fn: Callable[[Callable[[], bool]], Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.future: Future[Any] = Future()
        self._stop = threading.Event()

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def cancel(self) -> None:
        """Stop the job: a queued job never runs, a running one sees ``should_stop()``."""
        self._stop.set()
        self.future.cancel()

    def run(self) -> None:
        if self._stop.is_set() or not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn(self.should_stop)
        except BaseException as error:  # handed to whoever awaits the job
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class Worker:
    """A single daemon thread draining a priority queue of jobs."""

    def __init__(self, name: str = "dmem-inference") -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Callable[[], bool]], Any], *, priority: Priority, name: str = "job") -> Job:
        """Queue ``fn(should_stop)``; returns the job (its ``future`` carries the result)."""
        if self._closed:
            raise RuntimeError("the inference worker is closed")
        job = Job(fn, name)
        self._queue.put((int(priority), next(self._order), job))
        return job

    def close(self) -> None:
        """Finish the running job and stop; jobs still queued are cancelled."""
        if self._closed:
            return
        self._closed = True
        self._queue.put((-1, -1, None))

    def _loop(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                break
            log.debug("running %s", job.name)
            job.run()
        while not self._queue.empty():
            _, _, job = self._queue.get_nowait()
            if job is not None:
                job.cancel()
