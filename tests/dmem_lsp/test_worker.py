"""The inference worker: one thread, priorities, and stop flags that reach running jobs."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError

import pytest

from dmem_lsp.runtime.worker import Priority, Worker

WAIT = 30


def test_jobs_run_on_one_thread_that_is_not_the_callers():
    worker = Worker()
    names = [worker.submit(lambda stop: threading.current_thread().name, priority=Priority.REQUEST) for _ in range(3)]
    assert {job.future.result(WAIT) for job in names} == {"dmem-inference"}
    worker.close()


def test_requests_go_before_writes_queued_behind_a_running_job():
    worker = Worker()
    started, release = threading.Event(), threading.Event()
    order: list[str] = []
    blocker = worker.submit(lambda stop: (started.set(), release.wait(WAIT)), priority=Priority.WRITE)
    assert started.wait(WAIT)
    jobs = [
        worker.submit(lambda stop: order.append("write"), priority=Priority.WRITE),
        worker.submit(lambda stop: order.append("request"), priority=Priority.REQUEST),
        worker.submit(lambda stop: order.append("second request"), priority=Priority.REQUEST),
    ]
    release.set()
    for job in (blocker, *jobs):
        job.future.result(WAIT)
    assert order == ["request", "second request", "write"]
    worker.close()


def test_cancel_reaches_a_running_job_and_a_queued_one_never_runs():
    worker = Worker()
    started = threading.Event()
    steps: list[int] = []

    def long_job(should_stop):
        started.set()
        while not should_stop():
            steps.append(1)
            threading.Event().wait(0.001)
        return "stopped"

    running = worker.submit(long_job, priority=Priority.REQUEST)
    queued = worker.submit(lambda stop: steps.append(-1), priority=Priority.REQUEST)
    assert started.wait(WAIT)
    queued.cancel()
    running.cancel()
    assert running.future.result(WAIT) == "stopped"  # it ran to its own end, seeing the flag
    with pytest.raises(CancelledError):
        queued.future.result(WAIT)
    follow = worker.submit(lambda stop: "next", priority=Priority.REQUEST)
    assert follow.future.result(WAIT) == "next" and -1 not in steps
    worker.close()


def test_errors_reach_the_caller_and_the_worker_goes_on():
    worker = Worker()
    failing = worker.submit(lambda stop: 1 / 0, priority=Priority.REQUEST)
    with pytest.raises(ZeroDivisionError):
        failing.future.result(WAIT)
    assert worker.submit(lambda stop: 2, priority=Priority.REQUEST).future.result(WAIT) == 2
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(lambda stop: 3, priority=Priority.REQUEST)
