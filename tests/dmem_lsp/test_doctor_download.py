"""``dmem-lsp download`` and doctor's hints and exit codes, offline (no network here).

Real subprocesses with their own Hugging Face cache (``HF_HOME`` in a temp dir): a hub repo
is "in the cache" when its snapshot is laid out there as huggingface_hub lays it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dmem_lsp.runtime.locations import resolve_local
from dmem_lsp.runtime.options import EngineError


def run(tmp_path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "dmem_lsp", *args], cwd=cwd or tmp_path, env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )


def cache_repo(tmp_path: Path, repo: str) -> Path:
    """A snapshot of ``repo`` in the temp cache, laid out as huggingface_hub does."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "qwen3"}')
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def test_download_of_local_directories_needs_nothing(tmp_path):
    (model := tmp_path / "model").mkdir()
    (model / "config.json").write_text("{}")
    (adapter := tmp_path / "adapter").mkdir()
    result = run(tmp_path, "download", "--model", str(model), "--adapter", str(adapter))
    assert result.returncode == 0, result.stderr
    assert f"model {model}: a local directory" in result.stdout and "nothing to download" in result.stdout


def test_download_offline_says_what_is_missing_and_finds_what_is_cached(tmp_path):
    missing = run(tmp_path, "download", "--model", "nobody/no-such-model")
    assert missing.returncode == 1
    assert "nobody/no-such-model is not in the cache and HF_HUB_OFFLINE=1 is set" in missing.stderr
    snapshot = cache_repo(tmp_path, "acme/tiny")
    cached = run(tmp_path, "download", "--model", "acme/tiny")
    assert cached.returncode == 0, cached.stderr
    assert f"model acme/tiny: in the cache already, {snapshot}" in cached.stdout


def test_the_offline_error_names_the_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError, match=r"dmem-lsp download --model nobody/no-such-model"):
        resolve_local("nobody/no-such-model", "model", "--model")
    with pytest.raises(EngineError, match=r"dmem-lsp download --adapter acme/adapter --revision v2"):
        resolve_local("acme/adapter", "adapter", "--adapter", "v2")


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    (root / ".dmem").mkdir()
    (root / "tools" / "adapter").mkdir(parents=True)
    (model := tmp_path / "model").mkdir()
    return root, model


def hints_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout.split("hints:")[1] if "hints:" in result.stdout else ""


def test_doctor_in_a_folder_with_its_own_adapter_would_start(tmp_path, project):
    root, model = project
    (root / ".dmem" / "config.toml").write_text('[adapter]\npath = "tools/adapter"\n')
    result = run(tmp_path, "--model", str(model), "doctor", cwd=root / "src")  # the default adapter is not cached
    assert result.returncode == 0, result.stdout
    assert f"workspace folder: {root}" in result.stdout and "the server would start" in result.stdout
    hints = hints_of(result)
    assert "--adapter none" not in hints and "not available offline" not in hints
    assert "folders without an adapter of their own" in hints and "dmem-lsp download --adapter" in hints


def test_doctor_says_a_missing_directory_does_not_exist(tmp_path, project):
    root, model = project
    (root / ".dmem" / "config.toml").write_text('[adapter]\npath = "tools/gone"\n')
    result = run(tmp_path, "--model", str(model), "--adapter", "none", "doctor", cwd=root)
    assert result.returncode == 0, result.stdout  # the server starts; that folder gets no memory
    hints = hints_of(result)
    assert "does not exist" in hints and "fix [adapter]" in hints and "no memory" in hints
    assert "network" not in hints and "download" not in hints

    gone = run(tmp_path, "--model", str(tmp_path / "no-model"), "--adapter", "none", "doctor", cwd=root)
    assert gone.returncode == 1 and "the server would not start" in gone.stdout
    assert f"the model directory {tmp_path / 'no-model'} does not exist" in hints_of(gone)
    assert "network" not in hints_of(gone)


def test_doctor_exits_1_when_the_model_is_not_cached_offline(tmp_path, project):
    root, _ = project
    result = run(tmp_path, "--model", "nobody/no-such-model", "--adapter", "none", "doctor", cwd=root)
    assert result.returncode == 1 and "the server would not start" in result.stdout
    assert "dmem-lsp download --model nobody/no-such-model" in hints_of(result)
    cache_repo(tmp_path, "acme/tiny")
    cached = run(tmp_path, "--model", "acme/tiny", "--adapter", "none", "doctor", cwd=root)
    assert cached.returncode == 0 and "hints:" not in cached.stdout, cached.stdout


def test_doctor_says_which_prompt_shape_completions_take_and_why(tmp_path, model_dirs):
    import memory
    from tests.memory.helpers import write_official
    from tests.tiny_models import load_tiny_model

    model = str(model_dirs["qwen3"])
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    chat = memory.save_adapter(mem, tmp_path / "chat", extra={"prompt": "chat"})
    plain = memory.save_adapter(mem, tmp_path / "plain")
    official = write_official(tmp_path / "official", mem)

    def line(adapter: str) -> str:
        result = run(tmp_path, "--model", model, "--adapter", adapter, "doctor")
        return next(text for text in result.stdout.splitlines() if text.startswith("completion prompts:"))

    assert line(str(chat)) == (
        'completion prompts: chat (the adapter was trained on chat prompts (its config\'s "prompt"))'
    )
    assert line(str(official)) == (
        "completion prompts: chat (an official δ-mem release adapter, trained on chat conversations)"
    )
    assert line(str(plain)) == (
        "completion prompts: fim (the adapter records no prompt shape, and the tokenizer has the FIM tokens)"
    )
    assert line("none") == (
        "completion prompts: fim (a fresh adapter records no prompt shape, and the tokenizer has the FIM tokens)"
    )
