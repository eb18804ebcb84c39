"""The dmem-lsp command: fast to start (no torch), --version, --help, doctor."""

from __future__ import annotations

import json
import os
import socket
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
    for flag in (
        "--tcp", "--host", "--port", "--model", "--adapter", "--device", "--quantization", "--log-file", "-v", "doctor"
    ):
        assert flag in help_.stdout


def test_a_closed_stdin_ends_the_server_quietly():
    result = run(stdin=subprocess.DEVNULL)
    assert result.returncode == 0 and result.stdout == ""


def test_a_bad_flag_is_refused_by_name():
    result = run("--device", "tpu")
    assert result.returncode == 2 and "--device" in result.stderr and "tpu" in result.stderr


def test_doctor_says_where_things_are(model_dirs, tmp_path):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    found = run("--model", str(model_dirs["qwen3"]), "--adapter", "none", "doctor", env=env, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    for expected in ("dmem-lsp", "torch", "transformers", "bitsandbytes", "CUDA", "would run on: cpu"):
        assert expected in found.stdout
    assert f"local directory {model_dirs['qwen3']}" in found.stdout
    assert str(tmp_path / "data" / "dmem-lsp" / "workspaces") in found.stdout
    assert "hints" not in found.stdout and "workspace config: none" in found.stdout
    missing = run("--model", "nobody/no-such-model", "doctor", env=env, cwd=tmp_path)
    assert "not in the cache" in missing.stdout and "--model" in missing.stdout.split("hints:")[1]


def test_doctor_shows_the_workspace_config(tmp_path):
    env = {
        **os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")
    }
    project = tmp_path / "project"
    (project / ".dmem").mkdir(parents=True)
    (project / "src").mkdir()
    config = project / ".dmem" / "config.toml"
    config.write_text(
        '[adapter]\nrepo = "acme/adapter"\nrevision = "v2"\n[stores]\nedits = false\n[memory]\nenabled = 3\n'
    )
    shown = run("--adapter", "none", "doctor", env=env, cwd=project / "src").stdout  # found from a subfolder
    assert (
        f"workspace config {config}" in shown
        and "adapter acme/adapter@v2: Hugging Face id acme/adapter at v2: not in the cache" in shown
    )
    assert "stores: edits=False" in shown
    hints = shown.split("hints:")[1]
    assert (
        "dmem-lsp download --adapter acme/adapter --revision v2" in hints and "enabled expected true or false" in hints
    )
    config.write_text('[adapter]\npath = "../../elsewhere"\n')
    shown = run("--adapter", "none", "doctor", env=env, cwd=project).stdout
    assert "unusable" in shown and "leads outside the repository" in shown.split("hints:")[1]


def test_starting_does_not_import_torch():
    code = "import sys, dmem_lsp.cli.main; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False False"


def test_serves_over_tcp(tmp_path):
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "dmem_lsp", "--tcp", "--port", str(port), "-vv"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    try:
        for line in server.stderr:  # wait for the listening socket
            if b"Serving on" in line:
                break
        with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
            stream = connection.makefile("rwb")

            def call(id_, method, params=None):
                body = json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode()
                stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                stream.flush()
                length = 0
                while (header := stream.readline()) != b"\r\n":
                    if header.lower().startswith(b"content-length"):
                        length = int(header.split(b":")[1])
                return json.loads(stream.read(length))

            assert call(1, "initialize", {"capabilities": {}})["result"]["serverInfo"]["name"] == "dmem-lsp"
            assert call(2, "shutdown")["result"] is None
            body = b'{"jsonrpc": "2.0", "method": "exit"}'
            stream.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            stream.flush()
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_doctor_shows_the_cpu_threads(tmp_path, model_dirs):
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), HF_HUB_OFFLINE="1")
    model = ("--model", str(model_dirs["qwen3"]), "--adapter", "none")
    chosen = run(*model, "--threads", "3", "doctor", env=env, cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "CPU threads: 3 (set; torch's default here" in chosen.stdout
    auto = run(*model, "doctor", env={**env, "OMP_NUM_THREADS": "2"}, cwd=tmp_path).stdout
    assert "CPU threads: 2 (auto: OMP_NUM_THREADS; torch's default here 2)" in auto
