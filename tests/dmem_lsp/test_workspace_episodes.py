"""Episodes from a git history: conventions and earlier diffs are remembered, a later change is
asked for, and secrets or ignored files never enter an episode."""

from __future__ import annotations

import json
import subprocess

import pytest
from transformers import AutoTokenizer

from dmem_lsp.cli.episodes import WorkspaceOptions, workspace_episodes
from dmem_lsp.cli.main import main
from memory.episodes import EpisodeError

SECRET = "sk-Zq8Lw2Xv9Rt4Yp7Nm3Kb6Hd1Jf5Gc0Ae"
TOKEN = "ghp_Q7w9E2r4T6y8U1i3O5p7A9s2D4f6G8h0J1k3"


def git(repo, *args):
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgsign=false", *args],
        check=True, capture_output=True, timeout=60,
    )


def commit(repo, message, files, force=()):
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo, "add", *[n for n in files if n not in force])
    if force:
        git(repo, "add", "-f", *force)
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q")
    commit(repo, "start", {
        "pyproject.toml": "[tool.ruff]\nline-length = 100\n",
        ".gitignore": "*.log\n",
        "app.py": "def add(a, b):\n    return a + b\n",
        ".env": f"API_KEY={SECRET}\n",
        "debug.log": "remember nothing from here\n",
    }, force=("debug.log",))
    commit(repo, "sub", {
        "app.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
        ".env": f"API_KEY={SECRET}\nOTHER=1\n",
        "client.py": f"TOKEN = '{TOKEN}'\n",
        "debug.log": "still nothing\n",
    })
    commit(repo, "mul", {
        "app.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
                  "\n\ndef mul(a, b):\n    return a * b\n",
    })
    return repo


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    return AutoTokenizer.from_pretrained(model_dirs["qwen3"])


def test_history_holds_conventions_and_earlier_diffs_never_secrets(repo, tokenizer):
    episodes = workspace_episodes(repo, tokenizer)
    assert [e.source.split()[1] for e in episodes] == ["app.py", "app.py"]  # commits 2 and 3, app.py only
    for episode in episodes:
        text = "".join(tokenizer.decode(p) for p in episode.history) + tokenizer.decode(episode.query + episode.target)
        for leaked in (SECRET, TOKEN, ".env", "client.py", "debug.log", "remember nothing"):
            assert leaked not in text

    second, third = (["".join(tokenizer.decode(p) for p in e.history)] for e in episodes)
    assert second[0].startswith("Project file pyproject.toml:\n[tool.ruff]")
    assert "Edit to app.py:" in second[0] and "def sub" not in second[0]  # the start commit's diff, not its own
    assert "+def sub(a, b):" in third[0] and "def mul" not in third[0]

    assert tokenizer.decode(episodes[1].target) == "\n\ndef mul(a, b):\n    return a * b\n<|im_end|>"
    query = tokenizer.decode(episodes[1].query)
    assert query.startswith("<|fim_prefix|>def add(a, b):") and query.endswith("<|fim_middle|>")  # the file before


def test_too_little_history_is_refused(tmp_path, tokenizer):
    repo = tmp_path / "one"
    repo.mkdir()
    git(repo, "init", "-q")
    commit(repo, "only", {"app.py": "x = 1\n"})
    with pytest.raises(EpisodeError, match="1 commit"):
        workspace_episodes(repo, tokenizer)
    with pytest.raises(EpisodeError, match="git rev-parse failed"):
        workspace_episodes(tmp_path / "missing", tokenizer)
    with pytest.raises(ValueError, match="max_commits=0"):
        WorkspaceOptions(max_commits=0)


def test_queries_take_the_shape_trained_for_with_the_cursor_inside_the_file(repo, tokenizer):
    commit(repo, "doc", {
        "app.py": 'def add(a, b):\n    """The sum."""\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n'
                  "\n\ndef mul(a, b):\n    return a * b\n",
    })
    fim = workspace_episodes(repo, tokenizer)[-1]
    chat = workspace_episodes(repo, tokenizer, WorkspaceOptions(prompt="chat"))[-1]
    assert (fim.history, fim.target) == (chat.history, chat.target)
    assert tokenizer.decode(fim.target).startswith('    """The sum."""\n')
    assert tokenizer.decode(fim.query).startswith("<|fim_prefix|>def add(a, b):\n<|fim_suffix|>    return a + b")
    text = tokenizer.decode(chat.query)
    assert text.startswith("<|im_start|>user\nComplete the code at <CURSOR>")
    assert text.endswith("<|im_start|>assistant\n")
    assert "def add(a, b):\n<CURSOR>    return a + b\n" in text
    with pytest.raises(ValueError, match="prompt='raw'"):
        WorkspaceOptions(prompt="raw")


def test_history_pieces_are_the_server_write_passes_within_its_budgets(repo, tokenizer):
    episodes = workspace_episodes(repo, tokenizer, WorkspaceOptions(write_chunk_tokens=8, convention_file_tokens=12))
    history = episodes[-1].history
    assert max(len(piece) for piece in history) == 8
    convention = tokenizer.encode("Project file pyproject.toml:\n[tool.ruff]\nline-length = 100\n")[:12]
    assert list(history[0] + history[1]) == convention[:8] + convention[8:12]  # cut to 12 tokens, passes of 8
    assert tokenizer.decode(history[2]).startswith("Edit to ")
    spent = workspace_episodes(repo, tokenizer, WorkspaceOptions(convention_tokens=0))[-1].history
    assert not tokenizer.decode(spent[0]).startswith("Project file"), "a spent budget writes no convention file"


def test_adapter_train_on_a_workspace(repo, model_dirs, tmp_path, capsys):
    output = tmp_path / "adapter"
    code = main([
        "adapter", "train", "--model", str(model_dirs["qwen3"]), "--workspace", str(repo), "--output", str(output),
        "--steps", "2", "--lr", "1e-2", "--eval-fraction", "0", "--device", "cpu", "--no-progress",
    ])
    assert code == 0, capsys.readouterr().err
    assert (output / "adapter.safetensors").is_file() and (output / "loss.csv").is_file()
    assert "saved" in capsys.readouterr().out
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["prompt"] == "fim"  # this tokenizer has the FIM tokens and the fresh adapter records nothing
    assert (config["training"]["schedule"], config["training"]["rows"]) == ("cosine", 1)

    chat = tmp_path / "chat"
    code = main([
        "adapter", "train", "--model", str(model_dirs["qwen3"]), "--workspace", str(repo), "--output", str(chat),
        "--steps", "2", "--rows", "2", "--schedule", "constant", "--warmup-steps", "1", "--prompt", "chat",
        "--eval-fraction", "0", "--device", "cpu", "--no-progress",
    ])
    assert code == 0, capsys.readouterr().err
    config = json.loads((chat / "adapter_config.json").read_text())
    assert config["prompt"] == "chat"
    assert (config["training"]["rows"], config["training"]["schedule"], config["training"]["warmup_steps"]) == (
        2, "constant", 1
    )
    capsys.readouterr()
    assert main(["adapter", "info", str(chat)]) == 0
    assert "prompt      chat: the adapter was trained on chat prompts" in capsys.readouterr().out
