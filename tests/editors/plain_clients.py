"""What the tests of plain LSP clients (Emacs eglot, Vim ALE) share.

The file a user edits, the server command they configure (the real server with a tiny
model), the settings, and the text the model completes after ``return a``, computed by the
engine in this process, greedy, with an empty memory, as the server will.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dmem_lsp.runtime.engine import Engine, EngineOptions
from dmem_lsp.runtime.prompts import is_multiline
from tests.dmem_lsp.lsp import expected_completion

SOURCE = "import os\n\n\ndef add(a, b):\n    return \n"
TYPED = "    return a"
"""Line 5 once the user has typed ``a`` at its end."""
SETTINGS = {
    "completion": {"maxTokens": 8, "debounceMs": 0},
    "explain": {"maxTokens": 16},
    "memory": {"editDebounceMs": 600000},  # edits are not written as typed, so memory stays empty
}
REQUIRED = os.environ.get("DMEM_REQUIRE_EDITORS") == "1"
"""Set by .ci/run: a missing editor fails instead of skipping."""
EDITOR_TIMEOUT = 300
"""Seconds one editor session may take, all waits included (it loads torch and a model)."""


def missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


def server_command(model: Path, adapter: Path, log: Path | None = None) -> list[str]:
    """The README's server command with a tiny model; with ``log``, every message is logged there."""
    command = [sys.executable, "-m", "dmem_lsp", "--model", str(model), "--adapter", str(adapter), "--device", "cpu"]
    return command + (["--log-file", str(log), "-vv"] if log else [])


def editor_env(home: Path) -> dict[str, str]:
    """The environment of an editor (and the server it starts): its own HOME and XDG folders."""
    env = {**os.environ, "HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TERM": "xterm"}
    env.update(LANG="C.UTF-8", LC_ALL="C.UTF-8")  # the model writes any character
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        (home / name).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / name)
    return env


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / "main.py").write_text(SOURCE)
    return root


@pytest.fixture(scope="module")
def expected_after_a(talkative_model, talkative_adapter) -> str:
    """What the server completes after ``return a`` on line 5."""
    engine = Engine.load(EngineOptions(model=str(talkative_model), adapter=str(talkative_adapter), device="cpu"))
    prefix = SOURCE[: SOURCE.index("return ") + len("return ")] + "a"
    suffix = "\n"
    text = expected_completion(engine, prefix, suffix, is_multiline(TYPED, ""), max_tokens=8)
    assert text.strip(), "the talkative model always says something"
    return text
