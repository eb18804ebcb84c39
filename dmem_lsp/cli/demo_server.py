"""The demo's server: started, asked and ended as an editor does it, one at a time.

``DemoServer`` runs ``dmem-lsp`` over stdio on the demo's model (``start``: until the model
is ready and the workspace's memory is open), asks it for the ghost text at the end of a
document (``ask``), reads the conventions store's state (``conventions_state``), has
``dmem-lsp --reset-memory`` typed in a terminal (``reset_from_a_terminal``) and ends it with
shutdown and exit (``stop``: SIGTERM, then SIGKILL, when it does not end); ``terminate`` is
Ctrl-C's SIGTERM. Its LSP client is ``demo_client``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lsprotocol import types

from dmem_lsp.cli.demo_client import TIMEOUT, DemoClient, DemoError, end, forward, say
from dmem_lsp.lsp.protocol import as_json

__all__ = ["OPTIONS", "SERVER", "DemoServer"]

log = logging.getLogger(__name__)

OPTIONS = {"completion": {"debounceMs": 0, "maxTokens": 8}, "memory": {"saveDebounceMs": 0}}
SERVER = [sys.executable, "-m", "dmem_lsp"]


class DemoServer:
    """One ``dmem-lsp`` at a time, serving ``model`` and ``adapter`` on the CPU for ``workspace``."""

    def __init__(self, workspace: Path, model: Path, adapter: Path) -> None:
        self.workspace = workspace
        self.args = ["--model", str(model), "--adapter", str(adapter), "--device", "cpu"]
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.client: DemoClient | None = None
        """The running server's client (None when none runs)."""
        self.stderr: asyncio.Future[None] | None = None
        """Its stderr, copied onto ours."""

    async def start(self) -> None:
        """``dmem-lsp`` over stdio, as an editor starts it: ready once its model is and the memory is open."""
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

    async def stop(self, quick: bool = False) -> None:
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

    def terminate(self) -> None:
        """SIGTERM to the running server (it saves), if one runs."""
        if self.client is not None and self.client._server is not None:
            with contextlib.suppress(ProcessLookupError):
                self.client._server.terminate()

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
