"""The dmem-lsp command: fast to start (no torch), answers --version and --help."""

from __future__ import annotations

import subprocess
import sys

from dmem_lsp import __version__


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "dmem_lsp", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version_and_help():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"dmem-lsp {__version__}"
    help_ = run("--help")
    assert help_.returncode == 0 and "language server" in help_.stdout


def test_without_a_server_it_says_so_on_stderr():
    result = run()
    assert result.returncode == 2 and result.stdout == ""
    assert "not part of this release" in result.stderr


def test_starting_does_not_import_torch():
    code = "import sys, dmem_lsp.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False False"
