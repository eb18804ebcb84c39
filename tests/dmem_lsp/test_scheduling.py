"""KeyedDebouncer: per key only the newest work runs, once; flush and flush_all run what waits.

Delays are either very long (the work must not run by itself during the test) or zero
(it runs on the loop's next turn); the tests wait on futures and events, never on a sleep.
"""

import asyncio

import pytest

from dmem_lsp.runtime.scheduling import KeyedDebouncer

pytestmark = pytest.mark.asyncio

LONG = 3600.0
"""A delay that never passes during a test."""


def recorder(runs: list, name, result=None, gate=None, started=None, done=None):
    """Work that notes its ``name`` in ``runs``; it sets ``started``, waits for ``gate``, sets ``done``."""

    async def work():
        if started is not None:
            started.set()
        if gate is not None:
            await gate.wait()
        runs.append(name)
        if done is not None:
            done.set()
        return result if result is not None else name

    return lambda: work()


async def test_only_the_newest_work_for_a_key_runs():
    runs: list = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    first = debouncer.schedule("doc", LONG, recorder(runs, "first"))
    second = debouncer.schedule("doc", 0, recorder(runs, "second"))
    assert await second == "second"
    assert first.cancelled()
    assert runs == ["second"] and not debouncer.pending("doc")


async def test_keys_are_independent():
    runs: list = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    waiting = debouncer.schedule("a", LONG, recorder(runs, "a"))
    assert await debouncer.schedule("b", 0, recorder(runs, "b")) == "b"
    assert runs == ["b"] and debouncer.pending("a") and not waiting.done()
    debouncer.cancel_all()
    assert waiting.cancelled() and debouncer.keys() == []


async def test_cancel_drops_the_work():
    runs: list = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    outcome = debouncer.schedule("doc", LONG, recorder(runs, "x"))
    assert debouncer.cancel("doc") is True
    assert debouncer.cancel("doc") is False
    assert outcome.cancelled() and runs == []


async def test_flush_runs_the_waiting_work_now_and_returns_its_result():
    runs: list = []
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    outcome = debouncer.schedule("doc", LONG, recorder(runs, "x", result=42))
    assert await debouncer.flush("doc") == 42
    assert await outcome == 42 and runs == ["x"]
    assert await debouncer.flush("doc") is None  # nothing waits any more: nothing runs again
    assert runs == ["x"]


async def test_flush_all_runs_everything_waiting_and_waits_for_running_work():
    runs: list = []
    gate, started, a_done, b_done = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    running = asyncio.ensure_future(debouncer.run("busy", recorder(runs, "busy", gate=gate, started=started)))
    await started.wait()
    debouncer.schedule("a", LONG, recorder(runs, "a", done=a_done))
    debouncer.schedule("b", LONG, recorder(runs, "b", done=b_done))
    flushing = asyncio.ensure_future(debouncer.flush_all())
    await a_done.wait()
    await b_done.wait()  # a and b ran at once; flush_all still waits for busy
    assert runs == ["a", "b"] and not flushing.done()
    gate.set()
    await flushing
    assert runs[-1] == "busy" and running.done()


async def test_run_is_not_cancelled_with_its_caller():
    runs: list = []
    gate, started = asyncio.Event(), asyncio.Event()
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    caller = asyncio.ensure_future(debouncer.run("doc", recorder(runs, "save", gate=gate, started=started)))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    gate.set()
    await debouncer.flush_all()  # the work began: it finishes, and flush_all waits for it
    assert runs == ["save"]


async def test_a_failure_is_logged_and_the_other_keys_still_run(caplog):
    runs: list = []

    async def boom():
        raise RuntimeError("disk full")

    debouncer: KeyedDebouncer[str] = KeyedDebouncer("saving")
    failing = debouncer.schedule("a", LONG, boom)
    debouncer.schedule("b", LONG, recorder(runs, "b"))
    await debouncer.flush_all()
    assert runs == ["b"]
    assert isinstance(failing.exception(), RuntimeError)
    assert "saving failed" in caplog.text and "disk full" in caplog.text


async def test_quiet_returns_after_the_delay_and_supersedes_older_waits():
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    older = debouncer.schedule("doc", LONG, recorder([], "older"))
    await debouncer.quiet("doc", 0)  # returns once the key was quiet for its (zero) delay
    assert older.cancelled() and not debouncer.pending("doc")


async def test_cancelling_a_waiter_drops_its_timer():
    debouncer: KeyedDebouncer[str] = KeyedDebouncer()
    waiter = debouncer.schedule("doc", LONG, recorder([], "never"))
    waiter.cancel()  # whoever awaited it was cancelled (a newer request, $/cancelRequest)
    await debouncer.quiet("other", 0)  # a few loop turns: the future's callbacks have run
    assert not debouncer.pending("doc") and debouncer.keys() == []
