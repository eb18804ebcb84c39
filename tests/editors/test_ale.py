"""Vim with ALE (Debian's vim and vim-ale) against the real server, tiny model.

Vim runs in a pseudo-terminal (pexpect) with the README's ALE configuration, and the test
types as a user would: ``a`` at the end of ``return ``, then ALE's automatic completion
menu, <C-n><C-y> to take its item; then ``:ALECodeAction`` on lines 1-5 and ``1<CR>`` in
ALE's menu. Autocommands in the vimrc report what Vim did (the menu, the completed line, the
message window ALE opens) into files, and print a marker that the test waits for.
"""

from __future__ import annotations

import contextlib
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
from tests.editors.quitting import assert_edit_saved, changes_received, lock_holder, memory_files, until, wait_for_exit

pexpect = pytest.importorskip("pexpect")

VIMRC = """\
set nocompatible
" -- the README's configuration --
let g:ale_completion_enabled = 1
let g:ale_lsp_show_message_severity = 'information'
let g:ale_linters = {{'python': ['dmem']}}
packadd! ale
function! DmemRoot(buffer) abort
  let l:git = ale#path#FindNearestDirectory(a:buffer, '.git')
  return empty(l:git) ? expand('#' . a:buffer . ':p:h') : fnamemodify(l:git, ':h:h')
endfunction
call ale#linter#Define('python', {{
\\   'name': 'dmem',
\\   'lsp': 'stdio',
\\   'executable': {executable},
\\   'command': {command},
\\   'project_root': function('DmemRoot'),
\\   'initialization_options': {{'dmem': {settings}}},
\\}})
" -- what the test watches --
filetype plugin on
set noswapfile shortmess+=I
function! Report(name, value) abort
  call writefile([json_encode(a:value)], {reports} . '/' . a:name . '.json')
  call echoraw("\\e]2;dmem-" . a:name . "\\x07")
endfunction
autocmd CompleteChanged * call Report('menu', v:event.completed_item)
autocmd CompleteDone * call Report('done', getline('.'))
autocmd FileType ale-preview.message call Report('message', getline(1, '$'))
"""


def _vim_with_ale() -> str:
    vim = shutil.which("vim")
    if vim and Path("/usr/share/vim-ale/autoload/ale.vim").exists():
        probe = subprocess.run([vim, "--version"], capture_output=True, text=True, timeout=60)
        if "+timers" in probe.stdout and "+job" in probe.stdout:
            return vim
    missing("Vim with ALE not found (Debian: vim vim-ale; scripts/setup-editors installs them)")


def _vim_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextlib.contextmanager
def _vim(workspace: Path, tmp_path: Path, model: Path, adapter: Path, log: Path | None = None):
    """Vim with the README's ALE configuration editing main.py: (the pexpect child, its reports folder)."""
    vim = _vim_with_ale()
    reports = tmp_path / "reports"
    reports.mkdir()
    python, *arguments = server_command(model, adapter, log)
    vimrc = tmp_path / "vimrc"
    vimrc.write_text(
        VIMRC.format(
            executable=_vim_string(python),
            command=_vim_string("%e " + " ".join(arguments)),
            settings=json.dumps(SETTINGS),
            reports=_vim_string(str(reports)),
        )
    )
    env = editor_env(tmp_path / "home")
    child = pexpect.spawn(
        vim, ["-N", "-u", str(vimrc), "-i", "NONE", "-n", "main.py"],
        cwd=str(workspace), env=env, dimensions=(50, 250), encoding="utf-8", codec_errors="replace",
        timeout=EDITOR_TIMEOUT,
    )
    child.logfile_read = screen = _Screen()
    try:
        yield child, reports
    except (pexpect.TIMEOUT, pexpect.EOF) as error:
        raise AssertionError(f"Vim did not get there: {type(error).__name__}\nscreen tail: {screen.tail()!r}") from None
    finally:
        child.close(force=True)


@pytest.mark.timeout(EDITOR_TIMEOUT + 60)
def test_completion_and_explain_in_vim_with_ale(
    workspace, tmp_path, talkative_model, talkative_adapter, expected_after_a
):
    with _vim(workspace, tmp_path, talkative_model, talkative_adapter) as (child, reports):
        # typing a word opens ALE's menu with the item (once the model is loaded: the request
        # waits for it); <C-n><C-y> takes it
        child.send("5GAa")
        child.expect_exact("\x1b]2;dmem-menu\x07")
        child.send("\x0e\x19")
        child.expect_exact("\x1b]2;dmem-done\x07")
        child.send("\x1b:w\r")
        done = json.loads((reports / "done.json").read_text(encoding="utf-8"))
        assert done == TYPED + expected_after_a

        # :ALECodeAction on lines 1-5, then the first (only) action in ALE's menu
        child.send("ggV4j:ALECodeAction\r")
        child.expect_exact("Type number and <Enter>")
        child.send("1\r")
        child.expect_exact("\x1b]2;dmem-message\x07")
        shown = "\n".join(json.loads((reports / "message.json").read_text(encoding="utf-8")))
        child.send(":qa!\r")
        child.expect(pexpect.EOF)

    assert (workspace / "main.py").read_text(encoding="utf-8").split("\n")[4] == TYPED + expected_after_a
    assert "dmem: main.py, lines 1–5 (in " in shown
    path = Path(shown.split("(in ", 1)[1].split("):", 1)[0])
    explanation = path.read_text(encoding="utf-8")
    assert explanation.startswith("# main.py, lines 1–5\n")
    answer = explanation.split("```\n\n", 1)[1].strip()
    assert answer and answer in shown


@pytest.mark.timeout(EDITOR_TIMEOUT + 60)
def test_an_edit_made_just_before_wq_is_on_disk(workspace, tmp_path, talkative_model, talkative_adapter):
    """``:wq`` right after an edit: Vim sends ``didChange`` and ``didSave``, then stops the
    server (SIGTERM) and closes its pipes, with no ``shutdown``. The edit is in the memory on disk."""
    log = tmp_path / "dmem-lsp.log"
    files = memory_files(workspace, tmp_path / "home" / "XDG_DATA_HOME")
    with _vim(workspace, tmp_path, talkative_model, talkative_adapter, log) as (child, _):
        # each wait reads what Vim draws: Vim stops (in write) when its terminal is not read
        what = "a server to open the folder's memory"
        pid = until(lambda: _drain(child) or lock_holder(files), what, EDITOR_TIMEOUT, lambda: _log_tail(log))
        child.send("Goprint(add(1, 2))\x1b")  # leaving insert mode, ALE sends the change
        what = "the server to receive the edit"
        until(lambda: _drain(child) or changes_received(log), what, EDITOR_TIMEOUT, lambda: _log_tail(log))
        child.send(":wq\r")
        child.expect(pexpect.EOF)
    wait_for_exit(pid, EDITOR_TIMEOUT, lambda: _log_tail(log))
    assert (workspace / "main.py").read_text(encoding="utf-8").endswith("print(add(1, 2))\n")
    assert_edit_saved(files, "main.py")


def _drain(child) -> None:
    """Read what Vim wrote to its terminal so far (into the screen log), without waiting."""
    try:
        child.read_nonblocking(1 << 16, timeout=0)
    except pexpect.TIMEOUT:
        pass


def _log_tail(log: Path) -> str:
    return (
        "server log tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        if log.exists()
        else "no server log"
    )


class _Screen:
    """What Vim wrote to the terminal, kept for the failure message."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, data: str) -> None:
        self.text = (self.text + data)[-20000:]

    def flush(self) -> None:
        pass

    def tail(self) -> str:
        return self.text[-3000:]
