"""The dmem-lsp command: fast to start (no torch), --version, --help, doctor."""

from __future__ import annotations

import os
import subprocess
import sys

from dmem_lsp import __version__


def run(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "dmem_lsp", *args], capture_output=True, text=True, timeout=120, check=False, **kwargs
    )


def test_version_and_help():
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"dmem-lsp {__version__}"
    help_ = run("--help")
    assert help_.returncode == 0 and "language server" in help_.stdout
    for flag in ("--tcp", "--host", "--port", "--model", "--adapter", "--device", "--quantization", "--log-file", "-v", "doctor"):
        assert flag in help_.stdout


def test_a_closed_stdin_ends_the_server_quietly():
    result = run(stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout == ""


def test_a_bad_flag_is_refused_by_name():
    result = run("--device", "tpu")
    assert result.returncode == 2 and "--device" in result.stderr and "tpu" in result.stderr


def test_doctor_says_where_things_are(model_dirs, tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    found = run("--model", str(model_dirs["qwen3"]), "--adapter", "none", "doctor", env=env)
    assert found.returncode == 0, found.stderr
    for expected in ("dmem-lsp", "torch", "transformers", "bitsandbytes", "CUDA", "would run on: cpu"):
        assert expected in found.stdout
    assert f"local directory {model_dirs['qwen3']}" in found.stdout
    assert str(tmp_path / "data" / "dmem-lsp" / "workspaces") in found.stdout
    assert "hints" not in found.stdout
    missing = run("--model", "nobody/no-such-model", "doctor", env=env)
    assert "not in the cache" in missing.stdout and "--model" in missing.stdout.split("hints:")[1]


def test_starting_does_not_import_torch():
    code = "import sys, dmem_lsp.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False False"
