"""``dmem-lsp demo``: the main job seen on a laptop, on the CPU, with nothing downloaded.

Each step is printed (stdout) as it happens; logs, and the server's own stderr, go to stderr.

1. the model (``demo_model``): built once per recipe into the user cache dir, then reused;
2. the workspace: a small project in the cache dir, its convention file not there yet;
3. the real server, a ``dmem-lsp`` subprocess over stdio as an editor starts it, completes
   the documents with memory empty: the no-memory answers;
4. the convention file appears; the server writes it into memory (its ``dmem/memory``
   events are shown as they come) and the same documents are completed again, the
   conventions in memory only, never in the prompt;
5. the server restarts: memory comes back from disk, the answers are identical;
6. ``dmem-lsp --reset-memory`` (the command a user types, carried out by the running server)
   empties it: the answers are the no-memory ones again.

Ctrl-C stops the demo and its server (SIGTERM, then SIGKILL). This process imports torch
only to build the model; the servers are subprocesses, each a ``demo_server.DemoServer``
driven through ``demo_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import signal
import sys
import time
from pathlib import Path
from typing import Any

import platformdirs

from dmem_lsp.cli.demo_client import DemoClient, DemoError, saved_after, say, written
from dmem_lsp.cli.demo_server import DemoServer

__all__ = ["run_demo"]


def run_demo() -> int:
    """The whole demo; 0 when memory recalled most answers (or, untrained, changed some), persisted and reset as it
    should."""
    from dmem_lsp.cli.demo_model import RECIPE, RecipeError

    started = time.monotonic()
    demo: Demo | None = None
    say("dmem-lsp demo: δ-mem memory in the real server, on a small model, on the CPU, offline.")
    cache = Path(platformdirs.user_cache_dir("dmem-lsp")) / "demo"
    try:
        model, adapter = RECIPE.model(cache, say)
        workspace = prepare_workspace(RECIPE.workspace, cache / RECIPE.name / "workspace")
        demo = Demo(RECIPE, model, adapter, workspace)
        outcome = asyncio.run(demo.run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        return stopped()
    except (DemoError, RecipeError) as error:
        if demo is not None and demo.interrupted:  # the server was stopped under a step
            return stopped()
        print(f"dmem-lsp demo: {error}", file=sys.stderr, flush=True)
        return 1
    if demo.interrupted:  # a step ended anyway (a cancellation can be lost in Python 3.11's wait_for)
        return stopped()
    say(f"\nDone in {time.monotonic() - started:.0f} s.")
    return 0 if outcome else 1


def stopped() -> int:
    print("\ndmem-lsp demo: stopped (Ctrl-C); its server was stopped too", file=sys.stderr, flush=True)
    return 130


# -- step 2: the workspace ----------------------------------------------------------------


def prepare_workspace(spec: Any, root: Path) -> Path:
    """The demo's project at ``root``, as the spec has it, with no convention file yet."""
    root.mkdir(parents=True, exist_ok=True)
    (root / ".git").mkdir(exist_ok=True)  # a project root, as an editor finds one
    for relative in spec.conventions:
        (root / relative).unlink(missing_ok=True)
    for relative, text in {**spec.files, **{q.path: q.text for q in spec.queries}}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    from dmem_lsp.cli import memory as memory_cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        memory_cli.reset_memory(root, None)  # what an interrupted run left (no memory yet: nothing to do)
    say(f"[2/6] workspace: {root}")
    for query in spec.queries:
        say(f"      {query.path}: {query.prefix.rsplit(chr(10), 1)[-1]}▌")
    return root


# -- steps 3 to 6 ---------------------------------------------------------------------------


class Demo:
    def __init__(self, recipe: Any, model: Path, adapter: Path, workspace: Path) -> None:
        self.recipe, self.workspace = recipe, workspace
        self.spec = recipe.workspace
        self.server = DemoServer(workspace, model, adapter)
        self.interrupted = False
        """Ctrl-C came: the demo ends with 130 whatever the step it stopped did."""

    @property
    def client(self) -> DemoClient | None:
        """The running server's client."""
        return self.server.client

    async def run(self) -> bool:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        loop.add_signal_handler(signal.SIGINT, self.interrupt, task)
        try:
            return await self._steps()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await self.server.stop(quick=True)

    def interrupt(self, task: asyncio.Task | None) -> None:
        """Ctrl-C: flag it, cancel the steps and stop the server (SIGTERM: it saves), so that
        whatever the steps wait on ends now, even where a cancellation is lost."""
        self.interrupted = True
        if task is not None:
            task.cancel()
        self.server.terminate()

    async def _steps(self) -> bool:
        say("[3/6] the server, memory empty:")
        await self.server.start()
        before = await self.ask_all("no memory")

        say(f"[4/6] {', '.join(self.spec.conventions)} appears in the workspace; the server writes it into memory:")
        seen = len(self.client.events)
        for relative, text in self.spec.conventions.items():
            (self.workspace / relative).write_text(text, encoding="utf-8")
        for relative in self.spec.conventions:
            await self.client.wait_for(f"the write of {relative}", lambda c, r=relative: written(c.events[seen:], r))
        await self.client.wait_for("the save", lambda c: saved_after(c.events[seen:]))
        state = await self.server.conventions_state()
        say(
            f"      conventions store: {state['tokens']} tokens, state sha256 {state['sha256'][:16]}, "
            f"in {state['directory']}"
        )
        say("      the same documents, the conventions in memory only:")
        recalled = await self.ask_all("memory", before)

        say("[5/6] restart: the server ends (shutdown, exit) and a new one loads the memory from disk:")
        await self.server.stop()
        await self.server.start()
        again = await self.server.conventions_state()
        state.pop("directory"), again.pop("directory")
        say(
            f"      conventions store: {again['tokens']} tokens, state sha256 {again['sha256'][:16]}"
            f" ({'the same' if again == state else 'NOT the same'} as before the restart)"
        )
        after_restart = await self.ask_all("restarted", recalled)

        command = ["dmem-lsp", "--reset-memory", "--workspace", str(self.workspace)]
        say(f"[6/6] reset: $ {' '.join(command)}")
        seen = len(self.client.events)
        await self.server.reset_from_a_terminal()
        await self.client.wait_for("the reset", lambda c: any(e.get("event") == "reset" for e in c.events[seen:]))
        after_reset = await self.ask_all("reset", before)
        await self.server.stop()
        return self.verdict(before, recalled, after_restart, after_reset, again == state)

    def verdict(
        self, before: list[str], recalled: list[str], restarted: list[str], reset: list[str], same: bool
    ) -> bool:
        n = len(before)
        pairs = list(zip(self.spec.queries, recalled, before, strict=True))
        hits = sum(recalls(q, a) and not recalls(q, b) for q, a, b in pairs)
        changed = sum(a != b for a, b in zip(recalled, before, strict=True))
        identical = sum(a == b for a, b in zip(restarted, recalled, strict=True))
        gone = sum(a == b for a, b in zip(reset, before, strict=True))
        say("")
        if self.recipe.trained:
            say(f"recall:      {hits}/{n} answers recall the conventions, which are in memory only")
            lucky = sum(recalls(q, a) and recalls(q, b) for q, a, b in pairs)
            missed = sum(not recalls(q, a) for q, a, _ in pairs)
            if lucky:
                say(f"             ({lucky} right without memory too: the model's guess was the convention, so "
                    "memory is not shown by it)")
            if missed:
                say(
                    f"             ({missed} missed: the demo's model is small, trained on a CPU in about an hour; "
                    "README's \"Recall through the server\" gives its measured rate)"
                )
        else:
            say(
                f"recall:      memory changed {changed}/{n} answers; the {self.recipe.name} model is a stand-in, "
                "never trained to recall, so the values are not the conventions"
            )
        say(
            f"persistence: {identical}/{n} answers identical after the restart; "
            f"state {'identical' if same else 'CHANGED'}"
        )
        say(f"reset:       {gone}/{n} answers back to the no-memory ones")
        # a trained model must recall most of them (the demo's small one misses some: README gives its rate)
        remembered = 2 * hits > n if self.recipe.trained else changed > 0
        return remembered and identical == n and same and gone == n

    async def ask_all(self, label: str, compare: list[str] | None = None) -> list[str]:
        answers = []
        for i, query in enumerate(self.spec.queries):
            answer = await self.server.ask(query)
            answers.append(answer)
            note = ""
            if label == "memory":
                hit = recalls(query, answer)
                lucky = hit and recalls(query, compare[i])
                note = ("recalled ✓ (right without memory too)" if lucky else "recalled ✓" if hit
                        else "not recalled ✗") if self.recipe.trained else (
                    "changed by memory" if answer != compare[i] else "unchanged"
                )
            elif label == "restarted":
                note = "identical ✓" if answer == compare[i] else "DIFFERENT ✗"
            elif label == "reset":
                note = "the no-memory answer ✓" if answer == compare[i] else "NOT the no-memory answer ✗"
            say(f"      {label:>10}  {query.prefix.rsplit(chr(10), 1)[-1]}▌ → {answer!r}  {note}".rstrip())
        return answers


def recalls(query: Any, answer: str) -> bool:
    return answer.strip().startswith(query.expected)
