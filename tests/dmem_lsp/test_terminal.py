"""The server run by a person in a terminal, and what reaches an editor's error log.

The terminal is a real pty (``pty.fork``): the banner must appear and the first Ctrl-C
(the byte the terminal turns into SIGINT) must end the process cleanly. An editor shows
everything on the server's stderr as an error: a real model load must write no library
progress bar and no deprecation warning there.
"""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from tests.dmem_lsp.lsp import TIMEOUT, RawServer, server_env

QUIET = {"completion": {"maxTokens": 4}}


def _read_until(fd: int, done, timeout: float) -> bytes:
    """Everything the pty shows until ``done(output)`` or the child closes it (``timeout``: a guard)."""
    output = b""
    deadline = time.monotonic() + timeout
    while not done(output) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child has gone
            break
        if not chunk:
            break
        output += chunk
    return output


def test_in_a_terminal_it_says_what_it_is_and_the_first_ctrl_c_ends_it():
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal and stdin, stdout, stderr
        os.execv(sys.executable, [sys.executable, "-m", "dmem_lsp"])
    try:
        banner = _read_until(fd, lambda out: b"Ctrl-C ends it" in out, TIMEOUT)
        assert b"language server" in banner and b"vim.lsp.enable('dmem')" in banner and b"dmem-lsp doctor" in banner
        os.write(fd, b"\x03")  # Ctrl-C, once
        rest = _read_until(fd, lambda out: False, TIMEOUT)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, status
    assert b"stopped" in rest
    assert b"Traceback" not in rest and b"Fatal Python error" not in rest


def test_the_server_stderr_holds_no_progress_bars_or_deprecation_warnings(talkative_model, talkative_adapter, tmp_path):
    args = ["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"]
    server = RawServer(args, server_env(tmp_path))
    try:
        server.request(
            1, "initialize", {"processId": None, "rootUri": None, "capabilities": {}, "initializationOptions": QUIET}
        )
        server.response(1)
        server.notify("initialized", {})
        status, _ = server.wait_for(
            lambda m: m.get("method") == "dmem/status" and m["params"]["state"] in ("ready", "error")
        )
        assert status["params"]["state"] == "ready", status["params"]["message"]
        (path := tmp_path / "a.py").write_text("def f():\n    return")
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": path.as_uri(), "languageId": "python", "version": 1, "text": path.read_text()}},
        )
        server.request(
            2,
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": path.as_uri()},
                "position": {"line": 1, "character": 10},
                "context": {"triggerKind": 1},
            },
        )
        assert "result" in server.response(2)  # generation ran (it used to warn about past_key_values)
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    stderr = b"".join(server.stderr).decode(errors="replace")
    for noise in ("Loading weights", "%|", "FutureWarning", "deprecated", "Warning:"):
        assert noise not in stderr, stderr


QUIET_CHECK = """
import logging, sys, warnings
from dmem_lsp.cli.main import configure_logging
configure_logging(int(sys.argv[1]), None)
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward: No module named 'kernels'"
)
warnings.warn("`past_key_values` is deprecated", FutureWarning)
logging.getLogger("dmem_lsp.lsp.server").warning("a warning of our own")
"""


def test_library_notices_and_python_warnings_are_heard_only_with_v():
    quiet, verbose = (
        subprocess.run(
            [sys.executable, "-c", QUIET_CHECK, level], capture_output=True, text=True, timeout=60, check=True
        )
        for level in ("0", "1")
    )
    assert "kernels" not in quiet.stderr and "deprecated" not in quiet.stderr
    assert "a warning of our own" in quiet.stderr
    assert "kernels" in verbose.stderr and "FutureWarning" in verbose.stderr
