"""What the server acknowledged survives, and what cannot be saved is said: the real server
as a subprocess over raw pipes, real signals, real files, a real file-size limit.

- stdin closed (Vim/ALE, Emacs), SIGTERM, SIGINT, SIGHUP, ``exit`` right after ``shutdown``
  (Neovim): an acknowledged debug step and an edit still waiting for its debounce are on disk;
- a signal right after the last edit and ``didSave``, then stdin closed (Vim's ``:wq``): the
  edit is on disk;
- a file opened while the model loads: its first edit is written;
- a reset during a long write wins;
- a full disk (RLIMIT_FSIZE: writes fail with EFBIG as on a full one): the user is told, in
  the editor, that memory is not being saved; shutdown still answers;
- a manifest that is not JSON or has fields of the wrong type is reported and rebuilt from
  the state, without writing the conventions again; a state that fails its checksum is
  refused naming it, and the conventions are learned again;
- another adapter and back: each adapter's state is kept and the first one comes back.
"""

from __future__ import annotations

import os
import resource
import signal
import time

import pytest
import torch

from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.store import WorkspaceStore
from tests.dmem_lsp.kills import OPTIONS as FAST
from tests.dmem_lsp.kills import initialize, learning_ended, memory_event
from tests.dmem_lsp.lsp import TIMEOUT, RawServer, server_env
from tests.dmem_lsp.tampering import flip_a_bit

SLOW = {
    "completion": {"maxTokens": 4, "debounceMs": 0},
    "memory": {"saveDebounceMs": 600_000, "editDebounceMs": 600_000},
}
"""Nothing saves, and no edit is written, on its own: only the way out can save them."""
APP = "def add(a, b):\n    return a + b\n"


@pytest.fixture
def args(talkative_model, talkative_adapter):
    return ["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"]


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """The servers' and this process's memory folder (WorkspaceStore reads it here)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text(APP)
    return root


def start(args, tmp_path, workspace, options, **popen) -> tuple[RawServer, list[dict]]:
    """A server whose folder has opened, and the messages until then."""
    server = RawServer(args, server_env(tmp_path / "data"), **popen)
    initialize(server, workspace, options)
    _, seen = server.wait_for(lambda m: memory_event(m, "opened"))
    return server, seen


def command(server: RawServer, id_: int, name: str, *arguments) -> dict:
    server.request(id_, "workspace/executeCommand", {"command": name, "arguments": list(arguments)})
    response = server.response(id_)
    assert "error" not in response, response
    return response["result"]


def edit(server: RawServer, uri: str, text: str) -> None:
    server.notify(
        "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": APP}}
    )
    server.notify(
        "textDocument/didChange", {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": text}]}
    )


def shown(messages: list[dict]) -> list[str]:
    return [m["params"]["message"] for m in messages if m.get("method") == "window/showMessage"]


def stderr(server: RawServer) -> str:
    return b"".join(server.stderr).decode(errors="replace")


QUITS = {
    "stdin closed": lambda server: server.process.stdin.close(),
    "SIGTERM": lambda server: server.process.send_signal(signal.SIGTERM),
    "SIGINT": lambda server: server.process.send_signal(signal.SIGINT),
    "SIGHUP": lambda server: server.process.send_signal(signal.SIGHUP),
    "exit right after shutdown": lambda server: (server.request(90, "shutdown"), server.notify("exit")),
}


@pytest.mark.parametrize("quit", list(QUITS))
def test_acknowledged_memory_is_on_disk_however_the_client_goes(args, tmp_path, workspace, quit):
    server, _ = start(args, tmp_path, workspace, SLOW)
    try:
        tokens = command(server, 2, "dmem.rememberDebugStep", "test_add failed: the fixture reads qa/data.json")[
            "tokens"
        ]
        assert tokens > 0
        edit(server, (workspace / "src" / "app.py").as_uri(), APP + "\n\ndef sub(a, b):\n    return a - b\n")
        command(server, 3, "dmem.memoryStatus")  # the edit has arrived; it waits 10 minutes for its debounce
        QUITS[quit](server)
        assert server.process.wait(timeout=TIMEOUT) == 0, stderr(server)[-2000:]
    finally:
        if server.process.poll() is None:
            server.process.kill()
    saved = WorkspaceStore(workspace).read_saved()
    assert saved.tokens["debug"] == tokens and torch.count_nonzero(saved.states["debug"])
    assert saved.tokens.get("edits", 0) > 0 and torch.count_nonzero(saved.states["edits"]), "the last edit was lost"


@pytest.mark.parametrize("signal_", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM (Vim)", "SIGHUP (Emacs)"])
def test_what_the_client_wrote_just_before_its_signal_is_saved(args, tmp_path, workspace, signal_):
    """Vim's ``:wq``: the last change and ``didSave`` are written, then at once the signal, then
    stdin closes. The signal may come before the server has read them: they are handled first."""
    server, _ = start(args, tmp_path, workspace, SLOW)
    try:
        uri = (workspace / "src" / "app.py").as_uri()
        edit(server, uri, APP + "\n\ndef sub(a, b):\n    return a - b\n")
        server.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
        server.process.send_signal(signal_)
        server.process.stdin.close()
        assert server.process.wait(timeout=TIMEOUT) == 0, stderr(server)[-2000:]
    finally:
        if server.process.poll() is None:
            server.process.kill()
    saved = WorkspaceStore(workspace).read_saved()
    assert saved.tokens.get("edits", 0) > 0 and torch.count_nonzero(saved.states["edits"]), "the last edit was lost"


def test_the_first_edit_of_a_file_opened_while_the_model_loads_is_written(args, tmp_path, workspace):
    server = RawServer(args, server_env(tmp_path / "data"))
    try:
        initialize(server, workspace, FAST)
        edit(server, (workspace / "src" / "app.py").as_uri(), APP + "\n\ndef mul(a, b):\n    return a * b\n")
        opened, before = server.wait_for(lambda m: memory_event(m, "opened"))
        assert not [m for m in before if memory_event(m)], "the folder opened before the document"
        written, _ = server.wait_for(lambda m: memory_event(m, "written"))
        assert (written["params"]["store"], written["params"]["kind"], written["params"]["source"]) == (
            "edits",
            "edit",
            "src/app.py",
        )
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_a_reset_during_a_long_write_wins(args, tmp_path, workspace):
    server, _ = start(args + ["-vv"], tmp_path, workspace, {**FAST, "memory": {**FAST["memory"], "saveDebounceMs": 0}})
    try:
        long = " ".join(f"step {i}: the cache key misses the tenant id, so requests share rows." for i in range(120))
        server.request(2, "workspace/executeCommand", {"command": "dmem.rememberDebugStep", "arguments": [long]})
        deadline = time.monotonic() + TIMEOUT
        while b"running write debug" not in b"".join(server.stderr):  # the worker logs each chunk it starts
            assert time.monotonic() < deadline and server.process.poll() is None, stderr(server)[-2000:]
            time.sleep(0.05)
        reset = command(server, 3, "dmem.resetMemory", "debug")
        assert reset["stores"] == ["debug"]
        on_disk = WorkspaceStore(workspace).read_saved()  # reset has answered: what is on disk now
        assert on_disk.tokens["debug"] == 0 and not torch.count_nonzero(on_disk.states["debug"])
        remembered = next(
            (m for m in server.received if m.get("id") == 2 and "method" not in m), None
        ) or server.response(2)
        assert remembered["result"]["tokens"] == 0
        skipped = [m for m in server.received if memory_event(m, "skipped")]
        assert skipped and "reset" in skipped[-1]["params"]["reason"]
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    saved = WorkspaceStore(workspace).read_saved()
    assert saved.tokens["debug"] == 0 and not torch.count_nonzero(saved.states["debug"])


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # EFBIG past 1 KiB, as ENOSPC on a full disk


def test_a_full_disk_is_told_in_the_editor_and_shutdown_still_answers(args, tmp_path, workspace):
    server, seen = start(args, tmp_path, workspace, {**FAST, "memory": {**FAST["memory"], "saveDebounceMs": 0}},
                         preexec_fn=_limit_file_size)
    try:
        assert command(server, 2, "dmem.rememberDebugStep", "the build fails on a missing env var")["tokens"] > 0
        unsaved, _ = server.wait_for(lambda m: memory_event(m, "unsaved"))
        assert "File too large" in unsaved["params"]["reason"]
        told = [text for text in shown(server.received) if "is not being saved" in text]
        assert told and "File too large" in told[0]
        assert server.close() == 0  # shutdown answered without an error
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "Task exception was never retrieved" not in stderr(server) and "Traceback" not in stderr(server)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory: the full-disk test covers this path")
def test_a_read_only_memory_directory_is_told(args, tmp_path, workspace):
    server, _ = start(args, tmp_path, workspace, FAST)
    assert server.close() == 0
    directory = WorkspaceStore(workspace).dir
    directory.chmod(0o500)
    try:
        server, _ = start(args, tmp_path, workspace, FAST)
        assert command(server, 2, "dmem.rememberDebugStep", "the build fails on a missing env var")["tokens"] > 0
        server.wait_for(lambda m: memory_event(m, "unsaved"))
        assert any("is not being saved" in text for text in shown(server.received))
        assert server.close() == 0
    finally:
        directory.chmod(0o700)


def _learn(args, tmp_path, workspace) -> list[dict]:
    """Start, let the conventions pass end, shut down; every message of the session."""
    server, _ = start(args, tmp_path, workspace, FAST)
    server.wait_for(learning_ended)
    assert server.close() == 0
    return server.received


def test_a_broken_manifest_or_state_is_reported_and_recovered(args, tmp_path, workspace):
    (workspace / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    (workspace / "README.md").write_text("# Project\nTests live in qa/.\n")
    first = _learn(args, tmp_path, workspace)
    assert {m["params"]["source"] for m in first if memory_event(m, "written")} == {"pyproject.toml", "README.md"}
    files = WorkspaceStore(workspace)
    learned = files.read_saved()
    for broken, named in (
        ("{not json", "not a valid manifest"),
        ('{"audit": 5, "tokens": {}}', "audit must be a list"),
    ):
        files.manifest_path.write_text(broken)
        session = _learn(args, tmp_path, workspace)
        assert any(named in text for text in shown(session)), shown(session)
        assert not [m for m in session if memory_event(m, "written")], "conventions written again on top of themselves"
        manifest, problem = files.read_manifest(move_aside=False)
        assert problem is None and manifest["sources"] == learned.sources and manifest["tokens"] == learned.tokens
    assert len(list(files.dir.glob("manifest.json.corrupt-*"))) == 2

    flip_a_bit(files.state_path)
    session = _learn(args, tmp_path, workspace)
    assert any("fails its checksum" in text for text in shown(session)), shown(session)
    assert list(files.dir.glob("state.safetensors.corrupt-*"))
    # its files were only known from the refused state: they are learned again
    assert {m["params"]["source"] for m in session if memory_event(m, "written")} == {"pyproject.toml", "README.md"}


def test_another_adapter_and_back_reopens_the_first_state(args, tmp_path, workspace):
    server, _ = start(args, tmp_path, workspace, FAST)
    tokens = command(server, 2, "dmem.rememberDebugStep", "the migration needs --fake-initial")["tokens"]
    assert server.close() == 0
    files = WorkspaceStore(workspace)
    first = files.read_saved()
    assert first.tokens["debug"] == tokens

    other = [*args[:2], "--adapter", "none", "--device", "cpu"]
    server, seen = start(other, tmp_path, workspace, FAST)
    assert any("kept in adapters" in text for text in shown(seen)), shown(seen)
    assert command(server, 2, "dmem.memoryStatus")["folders"][0]["stores"]["debug"]["tokens"] == 0
    command(server, 3, "dmem.rememberDebugStep", "a step for the fresh adapter")
    assert server.close() == 0

    server, seen = start(args, tmp_path, workspace, FAST)
    assert any("restored the memory" in text for text in shown(seen)), shown(seen)
    status = command(server, 2, "dmem.memoryStatus")["folders"][0]["stores"]["debug"]
    assert status["tokens"] == tokens and status["sha256"] == state_sha256(first.states["debug"])
    assert server.close() == 0
    assert len(list(files.kept_dir.glob("*/state.safetensors"))) == 1  # the fresh adapter's, kept in turn
