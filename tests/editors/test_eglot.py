"""Emacs with eglot (Debian's emacs-nox and elpa-eglot) against the real server, tiny model.

Emacs runs in batch mode a session in eglot_session.el: eglot configured as the README
says, completion after a typed word through eglot's completion-at-point function, and the
code action "Explain with dmem" through eglot's own menu; or an edit, then quitting at once.
Emacs' results come back as JSON.
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
    SOURCE,
    TYPED,
    editor_env,
    expected_after_a,  # noqa: F401 (a fixture)
    missing,
    server_command,
    workspace,  # noqa: F401 (a fixture)
)
from tests.editors.quitting import assert_edit_saved, changes_received, memory_files, server_pid, wait_for_exit

SESSION = Path(__file__).with_name("eglot_session.el")


def _emacs_with_eglot() -> str:
    emacs = shutil.which("emacs")
    if emacs:
        probe = subprocess.run(
            [emacs, "--batch", "--eval", "(require 'eglot)"], capture_output=True, text=True, timeout=60
        )
        if probe.returncode == 0:
            return emacs
    missing("Emacs with eglot not found (Debian: emacs-nox elpa-eglot; scripts/setup-editors installs them)")


def _session(scenario: str, workspace: Path, tmp_path: Path, model: Path, adapter: Path, **env: str) -> dict:
    """Run eglot_session.el's ``scenario`` on main.py; its results. ``env``: more of its variables."""
    emacs = _emacs_with_eglot()
    out = tmp_path / "results.json"
    environment = editor_env(tmp_path / "home")
    environment.update(
        DMEM_TEST_CMD=json.dumps(server_command(model, adapter, env.pop("log", None))),
        DMEM_TEST_SETTINGS=json.dumps(SETTINGS),
        DMEM_TEST_OUT=str(out),
        DMEM_TEST_TIMEOUT=str(EDITOR_TIMEOUT - 30),
        DMEM_TEST_SCENARIO=scenario,
        **env,
    )
    run = subprocess.run(
        [emacs, "--batch", "-l", str(SESSION), str(workspace / "main.py")],
        cwd=workspace, env=environment, capture_output=True, text=True, timeout=EDITOR_TIMEOUT,
    )
    results = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    assert run.returncode == 0 and "failure" not in results, (
        results.get("failure"), results.get("messages"), run.stderr[-3000:]
    )
    return results


@pytest.mark.timeout(EDITOR_TIMEOUT + 60)
def test_completion_and_explain_in_eglot(workspace, tmp_path, talkative_model, talkative_adapter, expected_after_a):
    results = _session("complete-and-explain", workspace, tmp_path, talkative_model, talkative_adapter)

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


@pytest.mark.timeout(2 * EDITOR_TIMEOUT)
def test_an_edit_made_just_before_emacs_quits_is_on_disk(workspace, tmp_path, talkative_model, talkative_adapter):
    """``kill-emacs`` (C-x C-c, not saving) right after eglot sent an edit: Emacs sends no
    ``shutdown``; it sends the server SIGHUP and closes its pipes. The edit is in the memory on disk."""
    files = memory_files(workspace, tmp_path / "home" / "XDG_DATA_HOME")
    log = tmp_path / "dmem-lsp.log"
    _session(
        "quit-after-edit", workspace, tmp_path, talkative_model, talkative_adapter, log=str(log),
        DMEM_TEST_LOCK=str(files.lock_path),
    )
    wait_for_exit(server_pid(files, EDITOR_TIMEOUT), EDITOR_TIMEOUT)
    assert changes_received(log), "eglot said it sent the edit, and the server never read it"
    assert (workspace / "main.py").read_text(encoding="utf-8") == SOURCE  # not saved: only memory has it
    assert_edit_saved(files, "main.py")
