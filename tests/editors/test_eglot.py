"""Emacs with eglot (Debian's emacs-nox and elpa-eglot) against the real server, tiny model.

Emacs runs in batch mode the session in eglot_session.el: eglot configured as the README
says, completion after a typed word through eglot's completion-at-point function, and the
code action "Explain with dmem" through eglot's own menu. Emacs' results come back as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.editors.plain_clients import (
    EDITOR_TIMEOUT,
    SETTINGS,
    TYPED,
    editor_env,
    expected_after_a,  # noqa: F401 (a fixture)
    missing,
    server_command,
    workspace,  # noqa: F401 (a fixture)
)

SESSION = Path(__file__).with_name("eglot_session.el")


def _emacs_with_eglot() -> str:
    emacs = shutil.which("emacs")
    if emacs:
        probe = subprocess.run([emacs, "--batch", "--eval", "(require 'eglot)"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return emacs
    missing("Emacs with eglot not found (Debian: emacs-nox elpa-eglot; scripts/setup-editors installs them)")


@pytest.mark.timeout(EDITOR_TIMEOUT + 60)
def test_completion_and_explain_in_eglot(workspace, tmp_path, talkative_model, talkative_adapter, expected_after_a):
    emacs = _emacs_with_eglot()
    out = tmp_path / "results.json"
    env = editor_env(tmp_path / "home")
    env.update(
        DMEM_TEST_CMD=json.dumps(server_command(talkative_model, talkative_adapter)),
        DMEM_TEST_SETTINGS=json.dumps(SETTINGS),
        DMEM_TEST_OUT=str(out),
        DMEM_TEST_TIMEOUT=str(EDITOR_TIMEOUT - 30),
    )
    run = subprocess.run(
        [emacs, "--batch", "-l", str(SESSION), str(workspace / "main.py")],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=EDITOR_TIMEOUT,
    )
    results = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    assert run.returncode == 0 and "failure" not in results, (results.get("failure"), results.get("messages"), run.stderr[-3000:])

    # the typed "a" is kept and the completion follows it, on screen and on disk
    assert results["line"] == TYPED + expected_after_a
    assert (workspace / "main.py").read_text(encoding="utf-8").split("\n")[4] == TYPED + expected_after_a

    # eglot 1.9 opens no documents: the explanation is in a message, and in the file it names
    messages = results["messages"]
    assert "dmem: explaining main.py, lines 1–5…" in messages
    shown = results["explanation"]
    path = Path(shown.split("(in ", 1)[1].split("):", 1)[0])
    explanation = path.read_text(encoding="utf-8")
    assert explanation.startswith("# main.py, lines 1–5\n")
    answer = explanation.split("```\n\n", 1)[1].strip()
    assert answer and answer in shown
