"""The VS Code extension in real VS Code: code-server in headless Chromium, the packaged .vsix,
the real server with a tiny model.

``editors/vscode/e2e/ghost-text.mjs`` (puppeteer-core) does the driving: it installs the
.vsix with ``code-server --install-extension``, serves code-server on 127.0.0.1, opens the
workspace in Chromium, types, and checks that the ghost text is the engine's greedy
completion, that Tab inserts it, that the server writes it as an accepted completion, and
that no suggest popup offers it (VS Code asks for no ``textDocument/completion``); then it
makes one more edit and the user goes (the window closes, code-server is stopped), and this
test checks that the server ends and the edit is in the memory on disk.
code-server, puppeteer-core and Node 24 come from ``editors/vscode/e2e`` (npm) and Chromium
from Debian's ``chromium-headless-shell``, all installed by ``scripts/setup-editors``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmem_lsp.runtime.engine import Engine, EngineOptions
from dmem_lsp.runtime.prompts import is_multiline
from tests.dmem_lsp.lsp import expected_completion, server_env
from tests.editors.quitting import assert_edit_saved, memory_files, server_pid, wait_for_exit

EXTENSION = Path(__file__).resolve().parents[2] / "editors" / "vscode"
E2E = EXTENSION / "e2e"
SOURCE = "import os\n\n\ndef add(a, b):\n    return "
TYPED = "a"
LAST_EDIT = "  # the last edit"
"""Typed, not saved, just before the user goes."""
QUIT_TIMEOUT = 120
"""Seconds the server may take to end once code-server has gone (it saves first)."""
STEP_MS = 240_000
"""The longest one step of the run may take (the workbench loads slowly on a busy machine)."""
TIMEOUT = 4 * STEP_MS // 1000 + 120
"""Seconds for the whole node run (it stops itself after 4 steps' time) and the packaging."""
REQUIRED = os.environ.get("DMEM_REQUIRE_EDITORS") == "1"
"""Set by .ci/run: missing parts fail instead of skipping."""


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Node 24, code-server and puppeteer-core from editors/vscode/e2e, Chromium, and npm."""
    arch = {"x86_64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine(), platform.machine())
    node = E2E / "node_modules" / f"node-linux-{arch}" / "bin" / "node"
    chromium = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    npm = shutil.which("npm")
    if not (E2E / "node_modules" / ".dmem-installed").exists() or not node.exists():  # written once code-server built
        _missing("code-server and Node 24 are not installed in editors/vscode/e2e: run scripts/setup-editors")
    if chromium is None:
        _missing("no Chromium (Debian's chromium-headless-shell or chromium): run scripts/setup-editors as root")
    if npm is None or not (EXTENSION / "node_modules").is_dir():
        _missing("editors/vscode/node_modules is missing: run scripts/setup-editors (it runs npm ci there)")
    return {"node": str(node), "chromium": chromium, "npm": npm}


@pytest.fixture(scope="module")
def vsix(tools, tmp_path_factory) -> Path:
    """The extension packaged as users get it (vsce, through package.json's script)."""
    path = tmp_path_factory.mktemp("vsix") / "dmem.vsix"
    command = [tools["npm"], "run", "package", "--", "--out", str(path)]
    result = subprocess.run(command, cwd=EXTENSION, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return path


@pytest.fixture(scope="module")
def expected(talkative_model, talkative_adapter) -> str:
    """The engine's greedy completion after typing TYPED at the end of SOURCE, with an empty memory."""
    engine = Engine.load(EngineOptions(model=str(talkative_model), adapter=str(talkative_adapter), device="cpu"))
    prefix = SOURCE + TYPED
    text = expected_completion(engine, prefix, "", is_multiline(prefix.rsplit("\n", 1)[-1], ""), max_tokens=8)
    assert text.strip(), "the talkative model always says something"
    return text


@pytest.fixture(scope="module")
def session(tools, vsix, expected, talkative_model, talkative_adapter, tmp_path_factory) -> dict:
    """One run of ghost-text.mjs, then the wait for the server to end once code-server has gone:
    ``{output, returncode, files (the workspace's memory), lingered (why the server did not end)}``."""
    directory = tmp_path_factory.mktemp("code-server")
    files = memory_files(directory / "project", directory / "home" / ".local" / "share")  # the script's XDG_DATA_HOME
    server = [sys.executable, "-m", "dmem_lsp", "--model", str(talkative_model), "--adapter", str(talkative_adapter)]
    server += ["--device", "cpu"]
    config = {
        "dir": str(directory),
        "vsix": str(vsix),
        "chromium": tools["chromium"],
        "server": server,
        "source": SOURCE,
        "typed": TYPED,
        "expected": expected,
        "timeoutMs": STEP_MS,
        "lastEdit": LAST_EDIT,
    }
    env = {**server_env(), "DMEM_E2E": json.dumps(config)}
    process = subprocess.Popen(
        [tools["node"], str(E2E / "ghost-text.mjs")],
        cwd=E2E,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # code-server, its extension host and dmem-lsp: one group to end
    )
    lingered = None
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
        if process.returncode == 0:  # code-server has gone: so must the server, having saved
            try:
                wait_for_exit(server_pid(files, 10), QUIT_TIMEOUT)
            except AssertionError as error:
                lingered = str(error)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        output, _ = process.communicate()
        pytest.fail(f"ghost-text.mjs ran over {TIMEOUT} s:\n{output[-12000:]}")
    finally:
        try:
            os.killpg(process.pid, 15)  # whatever it started and left behind (after the checks: SIGTERM saves)
        except ProcessLookupError:
            pass
    return {"output": output, "returncode": process.returncode, "files": files, "lingered": lingered}


@pytest.mark.timeout(TIMEOUT + QUIT_TIMEOUT + 60)
def test_ghost_text_in_code_server_is_accepted_with_tab_and_learned(session):
    output = session["output"]
    assert session["returncode"] == 0, output[-12000:]
    assert "ghost text shown, accepted with Tab, learned; no popup" in output, output[-4000:]


@pytest.mark.timeout(TIMEOUT + QUIT_TIMEOUT + 60)
def test_an_edit_made_just_before_code_server_goes_is_on_disk(session):
    """The window closes and code-server is stopped right after an unsaved edit reached the
    server: the extension host deactivates the extension, whose client sends ``shutdown`` and
    ``exit``. The server ends, and the edit is in the memory on disk, after the one Ctrl+S wrote."""
    output = session["output"]
    assert session["returncode"] == 0 and "edited and quit" in output, output[-12000:]
    assert session["lingered"] is None, session["lingered"]
    assert_edit_saved(session["files"], "main.py", edits=2)
