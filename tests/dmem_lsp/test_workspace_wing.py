"""The workspace wing on its own: ``Learner`` with a fake host and a fake engine.

No language server and no model: the host records what the wing tells the user and the
client, the engine records which text each write pass put into which store (its tokenizer
is one id per byte, so a pass decodes back to its text). The inference worker, the policy,
the texts' framing and the files (in a temporary platformdirs home) are the real ones.
Delays are zero or an hour; the tests await the wing's own coroutines, never a sleep.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lsprotocol import types

from dmem_lsp.runtime.fingerprint import make_fingerprint
from dmem_lsp.runtime.settings import parse_settings
from dmem_lsp.runtime.worker import Worker
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.learning import MEMORY_EVENT, Learner
from dmem_lsp.workspace.store import WorkspaceStore

STORES = ("conventions", "debug", "edits")
SHAPE = (2, 1, 4, 4)
"""[layers, heads, rank, rank] of the fake engine's states."""


class ByteTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())


class FakeMemory:
    """What the wing and ``assist.write_memory`` use of ``memory.Memory``: a write pass adds
    its token count to its store's state and records its text."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.stores = list(STORES)
        self.layers = [None] * SHAPE[0]
        self.config = SimpleNamespace(state_heads=SHAPE[1], rank=SHAPE[2], write="token")
        self._states = {store: torch.zeros(SHAPE) for store in STORES}
        self.writing_to: str | None = None

    def reset(self) -> None:
        self._states = {store: torch.zeros(SHAPE) for store in STORES}

    def load_states(self, states: dict[str, torch.Tensor]) -> None:
        self._states = {store: tensor.clone() for store, tensor in states.items()}

    def states(self) -> dict[str, torch.Tensor]:
        return {store: tensor.clone() for store, tensor in self._states.items()}

    @contextlib.contextmanager
    def writing(self, store: str, segments: Any = None):
        self.writing_to = store
        try:
            yield
        finally:
            self.writing_to = None


class FakeEngine:
    device = "cpu"

    def __init__(self) -> None:
        self.tokenizer = ByteTokenizer()
        self.memory = FakeMemory(self)
        self.written: list[tuple[str, str]] = []
        """(store, text) of every write pass, in order."""
        self.loaded = SimpleNamespace(
            source=None,
            fingerprint=make_fingerprint(
                {"id": "fake", "model_type": "fake", "hidden_size": 8, "num_layers": SHAPE[0]},
                "0" * 64,
                {"rank": SHAPE[2], "stores": list(STORES)},
            ),
        )
        self.active = None

    def adapter(self, source: Any) -> Any:
        return self.loaded

    def use(self, adapter: Any) -> None:
        self.active = adapter

    def model(self, input_ids: torch.Tensor, **_: Any) -> None:
        store = self.memory.writing_to
        assert store is not None, "a write pass runs inside memory.writing()"
        ids = input_ids[0].tolist()
        self.written.append((store, bytes(ids).decode()))
        self.memory._states[store] = self.memory._states[store] + len(ids)

    def text_in(self, store: str) -> str:
        return "".join(text for name, text in self.written if name == store)


class FakeHost:
    """A ``Host``: records messages and notifications; documents are a dict of uri -> text."""

    def __init__(self, engine: FakeEngine, memory_settings: dict[str, Any]) -> None:
        self.settings, _ = parse_settings({"memory": memory_settings})
        self.worker = Worker()
        self.engine: Any = engine  # duck-typed: what the wing and assist use of an Engine
        self.documents: dict[str, str] = {}
        self.shown: list[tuple[types.MessageType, str]] = []
        self.notifications: list[tuple[str, Any]] = []
        self.progress: list[str] = []

    def show(self, kind: types.MessageType, message: str) -> None:
        self.shown.append((kind, message))

    async def begin_progress(self, title: str, message: str = "") -> str | None:
        self.progress.append(title)
        return "token"

    def report_progress(self, token: str | None, message: str) -> None:
        self.progress.append(message)

    def end_progress(self, token: str | None, message: str) -> None:
        self.progress.append(message)

    async def wait_for_engine(self) -> Any:
        return self.engine

    def editor_text(self, uri: str) -> str | None:
        return self.documents.get(uri)

    def current_text(self, uri: str) -> str:
        if uri in self.documents:
            return self.documents[uri]
        raise FileNotFoundError(uri)

    def notify_client(self, method: str, params: Any) -> None:
        self.notifications.append((method, params))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [params for method, params in self.notifications if method == MEMORY_EVENT and params["event"] == event]


@pytest.fixture
def data_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[tool.ruff]\nline-length = 99\n', encoding="utf-8")
    (root / "app.py").write_text("a = 1\n", encoding="utf-8")
    return root


@pytest.fixture
def wing(data_home):
    """(host, engine, learner), the worker closed afterwards."""
    engine = FakeEngine()
    host = FakeHost(engine, {"editDebounceMs": 3_600_000, "saveDebounceMs": 3_600_000})
    learner = Learner(host)  # FakeHost is a Host (mypy: tests/dmem_lsp/test_workspace_wing.py)
    yield host, engine, learner
    host.worker.close()


@pytest.mark.asyncio
async def test_a_convention_file_is_framed_written_into_conventions_and_saved(wing, project, data_home):
    host, engine, learner = wing
    memory = await learner.open(project)
    assert memory is not None and learner.folders == {project.resolve(): memory}
    framed = texts.convention("pyproject.toml", (project / "pyproject.toml").read_text())
    assert engine.text_in("conventions") == framed
    assert engine.text_in("edits") == engine.text_in("debug") == ""
    (opened,) = host.events("opened")
    assert opened["folder"] == project.resolve().as_uri() and opened["readOnly"] is False
    (written,) = host.events("written")
    assert written["store"] == "conventions" and written["source"] == "pyproject.toml"
    assert written["written"] == len(framed.encode())
    assert "dmem: learning the project's conventions" in host.progress and host.progress[-1] == "done"

    await learner.shutdown()  # the debounced save (an hour away) is done now
    files = WorkspaceStore(project)
    assert str(files.dir).startswith(str(data_home))
    saved = files.read_saved()
    assert saved.tokens["conventions"] == len(framed.encode())
    assert saved.sources["pyproject.toml"]  # learned: its sha256 is saved with the state
    assert float(saved.states["conventions"].sum()) > 0 and float(saved.states["edits"].sum()) == 0
    assert host.events("saved")


async def edit_app(wing, project: Path, *changes: str) -> str:
    """Open ``project`` and its app.py as the editor has it (``a = 1``), then change app.py to each of
    ``changes`` in turn (each edit waits an hour for quiet); app.py's uri."""
    host, _, learner = wing
    await learner.open(project)
    uri = (project / "app.py").resolve().as_uri()
    learner.opened(uri, "a = 1\n")
    for text in changes:
        host.documents[uri] = text
        learner.changed(uri)
    return uri


@pytest.mark.asyncio
async def test_the_last_edit_waiting_for_its_debounce_is_written_and_saved_at_shutdown(wing, project):
    _, engine, learner = wing
    uri = await edit_app(wing, project, "a = 2\n")  # waits an hour for quiet
    assert learner.sources.edits.pending(uri) and engine.text_in("edits") == ""

    await learner.shutdown()
    expected = texts.edit("app.py", texts.diff("app.py", "a = 1\n", "a = 2\n"))
    assert engine.text_in("edits") == expected
    assert WorkspaceStore(project).read_saved().tokens["edits"] == len(expected.encode())


@pytest.mark.asyncio
async def test_a_newer_change_supersedes_the_pending_one_and_did_save_writes_at_once(wing, project):
    _, engine, learner = wing
    uri = await edit_app(wing, project, "a = 2\n", "a = 3\n")
    await learner.flush_edit(uri)  # didSave
    assert not learner.sources.edits.pending(uri)
    assert engine.text_in("edits") == texts.edit("app.py", texts.diff("app.py", "a = 1\n", "a = 3\n"))
    await learner.shutdown()


@pytest.mark.asyncio
async def test_a_debug_step_goes_into_debug_and_a_reset_zeroes_it_on_disk(wing, project):
    host, engine, learner = wing
    memory = await learner.open(project)
    result = await learner.debug_step(None, "ValueError: bad\n", "note")
    assert result["tokens"] == len(texts.debug_step("note", "ValueError: bad\n", None).encode())
    assert engine.text_in("debug") == texts.debug_step("note", "ValueError: bad\n", None)

    await learner.reset(memory, ["debug"], "editor")
    (reset,) = host.events("reset")
    assert reset["stores"] == ["debug"] and reset["tokens"]["debug"] == 0
    saved = WorkspaceStore(project).read_saved()  # a reset saves at once
    assert saved.tokens["debug"] == 0 and float(saved.states["debug"].abs().sum()) == 0
    assert saved.tokens["conventions"] > 0

    status = learner.status(memory)
    assert status["folder"] == memory.uri and status["stores"]["debug"]["tokens"] == 0
    assert status["stores"]["debug"]["lastWrites"][-1]["kind"] == "reset"
    assert status["fileBytes"] == memory.files.state_path.stat().st_size
    await learner.shutdown()


@pytest.mark.asyncio
async def test_a_document_outside_every_folder_has_no_memory(wing, project, tmp_path):
    host, engine, learner = wing
    await learner.open(project)
    outside = (tmp_path / "elsewhere.py").as_uri()
    assert learner.folder_for(outside) is None
    result = await learner.debug_step(outside, "Traceback (most recent call last):", "note")
    reason = f"{outside} is outside every workspace folder: documents there use no memory"
    assert result == {"tokens": 0, "reason": reason}
    await learner.shutdown()


def test_the_workspace_wing_imports_no_lsp_and_no_cli():
    code = (
        "import sys, dmem_lsp.workspace.learning, dmem_lsp.runtime.scheduling\n"
        "print(sorted(m for m in sys.modules if m.startswith(('dmem_lsp.lsp', 'dmem_lsp.cli'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"
