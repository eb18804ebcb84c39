"""Helpers for driving the real server in a subprocess.

``RawServer`` speaks JSON-RPC over the pipes byte by byte, for what a well-behaved client
cannot send (bodies that are not JSON, params of the wrong shape). ``start`` gives a
pytest-lsp client, for whole sessions. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, make_test_lsp_client

from dmem_lsp.lsp.protocol import as_json as plain  # the client side unwraps custom messages alike
from dmem_lsp.runtime.prompts import completion_prompt, trim_suffix_overlap

SERVER = [sys.executable, "-m", "dmem_lsp"]
TIMEOUT = 180
"""Seconds for anything that waits on the server (it imports torch and loads a model)."""


def server_env(data_home: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if data_home is not None:
        env["XDG_DATA_HOME"] = str(data_home)
        env["XDG_CACHE_HOME"] = str(data_home / "cache")  # explanations the server writes
    return env


class RawServer:
    """The server over raw pipes: send any bytes, read every framed message."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        python_flags: tuple[str, ...] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        command = [sys.executable, *python_flags, "-m", "dmem_lsp", *args]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            preexec_fn=preexec_fn,
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[bytes] = []
        self.received: list[dict[str, Any]] = []
        """Every message read so far, in order."""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()

    def _read(self) -> None:
        stdout = self.process.stdout
        while True:
            length = None
            while True:
                line = stdout.readline()
                if not line:
                    self.messages.put(None)
                    return
                if line == b"\r\n":
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(stdout.read(length)))

    def send(self, message: dict[str, Any] | bytes) -> None:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def request(self, id_: int, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        message = self.messages.get(timeout=timeout)
        if message is None:
            raise EOFError("the server closed its stdout: " + b"".join(self.stderr).decode(errors="replace")[-2000:])
        self.received.append(message)
        return message

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT) -> tuple[dict, list[dict]]:
        """The first message that matches, and every message before it (server requests answered)."""
        seen = []
        while True:
            message = self.next(timeout)
            if match(message):
                return message, seen
            seen.append(message)
            if "method" in message and "id" in message:  # e.g. workDoneProgress/create
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def response(self, id_: int, timeout: float = TIMEOUT) -> dict[str, Any]:
        return self.wait_for(lambda m: m.get("id") == id_ and "method" not in m, timeout)[0]

    def close(self) -> int:
        """shutdown, exit, and the exit code."""
        try:
            self.request(999_999, "shutdown")
            assert "error" not in self.response(999_999, timeout=60)
            self.notify("exit")
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def make_client() -> LanguageClient:
    """A pytest-lsp client that also records ``dmem/status`` notifications."""
    client = make_test_lsp_client()
    client.statuses = []
    client.status_changed = asyncio.Event()
    client.memory_events = []
    client.memory_changed = asyncio.Event()

    @client.feature("dmem/status")
    def on_status(client: LanguageClient, params: Any) -> None:
        client.statuses.append(plain(params))
        client.status_changed.set()

    client.document_shown = asyncio.Event()

    def on_show_document(params: types.ShowDocumentParams) -> types.ShowDocumentResult:
        client.shown_documents.append(params)
        client.document_shown.set()
        return types.ShowDocumentResult(success=True)

    # in place of pytest-lsp's own handler (which records without telling anyone)
    client.protocol.fm.features[types.WINDOW_SHOW_DOCUMENT] = on_show_document

    @client.feature("dmem/memory")
    def on_memory(client: LanguageClient, params: Any) -> None:
        client.memory_events.append(plain(params))
        client.memory_changed.set()

    return client


CAPABILITIES = types.ClientCapabilities(
    window=types.WindowClientCapabilities(
        work_done_progress=True,
        show_message=types.ShowMessageRequestClientCapabilities(),
        show_document=types.ShowDocumentClientCapabilities(support=True),
    ),
    workspace=types.WorkspaceClientCapabilities(
        configuration=True, did_change_configuration=types.DidChangeConfigurationClientCapabilities()
    ),
    text_document=types.TextDocumentClientCapabilities(
        completion=types.CompletionClientCapabilities(),
        code_action=types.CodeActionClientCapabilities(),
    ),
)
"""A plain LSP client (no inline completion declared, as eglot): it gets textDocument/completion,
and the server answers textDocument/inlineCompletion all the same (the Neovim plugin asks it)."""


async def start(
    args: list[str], env: dict[str, str], options: dict[str, Any] | None = None, folders: list[Path] = ()
) -> tuple[LanguageClient, types.InitializeResult]:
    config = ClientServerConfig(server_command=[*SERVER, *args], client_factory=make_client, server_env=env)
    client = await config.start()
    params = types.InitializeParams(
        capabilities=CAPABILITIES,
        initialization_options=options,
        root_uri=folders[0].as_uri() if folders else None,
        workspace_folders=[types.WorkspaceFolder(uri=f.as_uri(), name=f.name) for f in folders] or None,
    )
    result = await asyncio.wait_for(client.initialize_session(params), TIMEOUT)
    return client, result


async def stop(client: LanguageClient) -> None:
    try:
        await asyncio.wait_for(client.shutdown_session(), 60)
    finally:
        await client.stop()


async def wait_for_status(client: LanguageClient, *states: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The first ``dmem/status`` in one of ``states`` (already received or still to come)."""

    async def wait() -> dict[str, Any]:
        while True:
            for status in client.statuses:
                if status["state"] in states:
                    return status
            client.status_changed.clear()
            await client.status_changed.wait()

    return await asyncio.wait_for(wait(), timeout)


async def wait_for_memory(
    client: LanguageClient, match: Callable[[dict[str, Any]], bool], after: int = 0, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """The first ``dmem/memory`` event from index ``after`` on that ``match``es (received or to come)."""

    async def wait() -> dict[str, Any]:
        while True:
            for event in client.memory_events[after:]:
                if match(event):
                    return event
            client.memory_changed.clear()
            await client.memory_changed.wait()

    return await asyncio.wait_for(wait(), timeout)


def expected_completion(engine, prefix, suffix, multiline, max_tokens=12):
    prompt = completion_prompt(engine.tokenizer, prefix, suffix, 1536, 512)
    stop = ["\n\n\n"] if multiline else ["\n"]
    text = engine.generate(prompt.input_ids, max_new_tokens=max_tokens, stop=stop).text
    return trim_suffix_overlap(text, suffix if multiline else suffix.split("\n", 1)[0])
