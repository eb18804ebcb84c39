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
only to build the model; the servers are subprocesses, driven by ``demo_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import platformdirs
from lsprotocol import types

from dmem_lsp.cli.demo_client import TIMEOUT, DemoClient, DemoError, end, forward, saved_after, say, written
from dmem_lsp.lsp.protocol import as_json

__all__ = ["run_demo"]

log = logging.getLogger(__name__)

OPTIONS = {"completion": {"debounceMs": 0, "maxTokens": 8}, "memory": {"saveDebounceMs": 0}}
SERVER = [sys.executable, "-m", "dmem_lsp"]


def run_demo() -> int:
    """The whole demo; 0 when memory recalled (or, untrained, changed), persisted and reset as it should."""
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
        self.args = ["--model", str(model), "--adapter", str(adapter), "--device", "cpu"]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.client: DemoClient | None = None
        self.interrupted = False
        """Ctrl-C came: the demo ends with 130 whatever the step it stopped did."""

    async def run(self) -> bool:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        loop.add_signal_handler(signal.SIGINT, self.interrupt, task)
        try:
            return await self._steps()
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await self.stop_server(quick=True)

    def interrupt(self, task: asyncio.Task | None) -> None:
        """Ctrl-C: flag it, cancel the steps and stop the server (SIGTERM: it saves), so that
        whatever the steps wait on ends now, even where a cancellation is lost."""
        self.interrupted = True
        if task is not None:
            task.cancel()
        if self.client is not None and self.client._server is not None:
            with contextlib.suppress(ProcessLookupError):
                self.client._server.terminate()

    async def _steps(self) -> bool:
        say("[3/6] the server, memory empty:")
        await self.start_server()
        before = await self.ask_all("no memory")

        say(f"[4/6] {', '.join(self.spec.conventions)} appears in the workspace; the server writes it into memory:")
        seen = len(self.client.events)
        for relative, text in self.spec.conventions.items():
            (self.workspace / relative).write_text(text, encoding="utf-8")
        for relative in self.spec.conventions:
            await self.client.wait_for(f"the write of {relative}", lambda c, r=relative: written(c.events[seen:], r))
        await self.client.wait_for("the save", lambda c: saved_after(c.events[seen:]))
        state = await self.conventions_state()
        say(
            f"      conventions store: {state['tokens']} tokens, state sha256 {state['sha256'][:16]}, "
            f"in {state['directory']}"
        )
        say("      the same documents, the conventions in memory only:")
        recalled = await self.ask_all("memory", before)

        say("[5/6] restart: the server ends (shutdown, exit) and a new one loads the memory from disk:")
        await self.stop_server()
        await self.start_server()
        again = await self.conventions_state()
        state.pop("directory"), again.pop("directory")
        say(
            f"      conventions store: {again['tokens']} tokens, state sha256 {again['sha256'][:16]}"
            f" ({'the same' if again == state else 'NOT the same'} as before the restart)"
        )
        after_restart = await self.ask_all("restarted", recalled)

        command = ["dmem-lsp", "--reset-memory", "--workspace", str(self.workspace)]
        say(f"[6/6] reset: $ {' '.join(command)}")
        seen = len(self.client.events)
        await self.reset_from_a_terminal()
        await self.client.wait_for("the reset", lambda c: any(e.get("event") == "reset" for e in c.events[seen:]))
        after_reset = await self.ask_all("reset", before)
        await self.stop_server()
        return self.verdict(before, recalled, after_restart, after_reset, again == state)

    def verdict(
        self, before: list[str], recalled: list[str], restarted: list[str], reset: list[str], same: bool
    ) -> bool:
        n = len(before)
        hits = sum(
            recalls(q, a) and not recalls(q, b) for q, a, b in zip(self.spec.queries, recalled, before, strict=True)
        )
        changed = sum(a != b for a, b in zip(recalled, before, strict=True))
        identical = sum(a == b for a, b in zip(restarted, recalled, strict=True))
        gone = sum(a == b for a, b in zip(reset, before, strict=True))
        say("")
        if self.recipe.trained:
            say(f"recall:      {hits}/{n} answers recall the conventions, which are in memory only")
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
        remembered = hits == n if self.recipe.trained else changed > 0
        return remembered and identical == n and same and gone == n

    # -- the server ----------------------------------------------------------------------

    async def start_server(self) -> None:
        began = time.monotonic()
        self.client = client = DemoClient()
        # a session of its own: the terminal's Ctrl-C reaches the demo, which stops the server
        await client.start_io(*SERVER, *self.args, env=self.env, start_new_session=True)
        process = client._server  # pygls keeps the process here; its stderr is piped
        self.stderr = asyncio.ensure_future(forward(process.stderr))
        say(f"      $ dmem-lsp {' '.join(self.args)}   (pid {process.pid}, stdio)")
        params = types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options=OPTIONS,
            root_uri=self.workspace.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=self.workspace.as_uri(), name=self.workspace.name)],
        )
        await asyncio.wait_for(client.initialize_async(params), TIMEOUT)
        client.initialized(types.InitializedParams())
        status = await client.wait_for(
            "a ready model", lambda c: next((s for s in c.statuses if s["state"] in ("ready", "error")), None)
        )
        if status["state"] == "error":
            raise DemoError(f"the server could not load the demo model: {status['message']}")
        opened = await client.wait_for(
            "the workspace's memory", lambda c: next((e for e in c.events if e["event"] in ("opened", "refused")), None)
        )
        if opened["event"] == "refused" or opened.get("readOnly"):
            raise DemoError(f"the server did not open the demo workspace's memory: {opened}")
        say(f"      ready in {time.monotonic() - began:.1f} s")

    async def stop_server(self, quick: bool = False) -> None:
        """shutdown and exit, as an editor ends it; SIGTERM, then SIGKILL, when it does not end."""
        client, self.client = self.client, None
        if client is None:
            return
        process = client._server
        try:
            if not quick and process.returncode is None:
                await asyncio.wait_for(client.shutdown_async(None), 60)
                client.exit(None)
                await asyncio.wait_for(process.wait(), 30)
        except (asyncio.TimeoutError, RuntimeError, ConnectionError) as error:
            log.warning("the server did not end when asked (%s): stopping it", error or type(error).__name__)
        finally:
            await end(process)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.stop(), 10)
            await asyncio.wait_for(self.stderr, 10)

    async def reset_from_a_terminal(self) -> None:
        """``dmem-lsp --reset-memory``: with a server running, the server carries it out."""
        process = await asyncio.create_subprocess_exec(
            *SERVER, "--reset-memory", "--workspace", str(self.workspace),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT)
        finally:
            await end(process)
        for line in output.decode(errors="replace").splitlines():
            say(f"      {line}")
        if process.returncode != 0:
            raise DemoError(f"dmem-lsp --reset-memory failed (exit {process.returncode})")

    async def conventions_state(self) -> dict[str, Any]:
        params = types.ExecuteCommandParams(command="dmem.memoryStatus", arguments=[self.workspace.as_uri()])
        result = as_json(await asyncio.wait_for(self.client.workspace_execute_command_async(params), TIMEOUT))
        (folder,) = result["folders"]
        store = folder["stores"]["conventions"]
        return {"tokens": store["tokens"], "sha256": store["sha256"], "directory": folder["directory"]}

    async def ask_all(self, label: str, compare: list[str] | None = None) -> list[str]:
        answers = []
        for i, query in enumerate(self.spec.queries):
            answer = await self.ask(query)
            answers.append(answer)
            note = ""
            if label == "memory":
                hit = recalls(query, answer)
                note = ("recalled ✓" if hit else "not recalled ✗") if self.recipe.trained else (
                    "changed by memory" if answer != compare[i] else "unchanged"
                )
            elif label == "restarted":
                note = "identical ✓" if answer == compare[i] else "DIFFERENT ✗"
            elif label == "reset":
                note = "the no-memory answer ✓" if answer == compare[i] else "NOT the no-memory answer ✗"
            say(f"      {label:>10}  {query.prefix.rsplit(chr(10), 1)[-1]}▌ → {answer!r}  {note}".rstrip())
        return answers

    async def ask(self, query: Any) -> str:
        """Open the document and ask for the ghost text at its end, as an editor does."""
        uri = (self.workspace / query.path).as_uri()
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=uri, language_id="python", version=1, text=query.text)
            )
        )
        lines = query.prefix.split("\n")
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=len(lines) - 1, character=len(lines[-1].encode("utf-16-le")) // 2),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
        try:
            result = await asyncio.wait_for(self.client.text_document_inline_completion_async(params), TIMEOUT)
        finally:
            self.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri=uri)))
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        text = items[0].insert_text if items else ""
        return text if isinstance(text, str) else text.value


def recalls(query: Any, answer: str) -> bool:
    return answer.strip().startswith(query.expected)
