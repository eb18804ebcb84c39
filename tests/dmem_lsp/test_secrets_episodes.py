"""``adapter train --workspace`` episodes pass the same secret policy as the server's writes.

A git history plants a password in a convention file's URL and an API key in a later diff, in
files that are mostly ordinary code: the files stay in the episodes (their conventions and
changes are what the adapter learns from) with the secrets redacted, never verbatim.
"""

from __future__ import annotations

import subprocess

import pytest
from transformers import AutoTokenizer

from dmem_lsp.cli.episodes import workspace_episodes

PASSWORD = "Hunter2Passw0rdQ"
KEY = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
APP = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"


def commit(repo, message, files):
    for name, text in files.items():
        (repo / name).write_text(text)
    base = ["git", "-C", str(repo), "-c", "user.name=T", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*base, "add", *files], check=True, capture_output=True, timeout=60)
    subprocess.run([*base, "commit", "-q", "-m", message], check=True, capture_output=True, timeout=60)


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    subprocess.run(["git", "-C", str(repo), "init", "-q"], check=True, timeout=60)
    setup = 'from setuptools import setup\n\nsetup(\n    name="acme",\n    packages=["acme"],\n'
    commit(
        repo,
        "start",
        {"setup.py": setup + f'    url="https://deploy:{PASSWORD}@pypi.acme/simple",\n)\n', "app.py": APP},
    )
    commit(repo, "client", {"app.py": APP + f'\n\nAPI_KEY = "{KEY}"\n\n\ndef mul(a, b):\n    return a * b\n'})
    commit(
        repo,
        "div",
        {
            "app.py": APP
            + f'\n\nAPI_KEY = "{KEY}"\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef div(a, b):\n    return a / b\n'
        },
    )
    return repo


def test_episodes_hold_the_files_with_their_secrets_redacted(repo, model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["qwen3"])
    episodes = workspace_episodes(repo, tokenizer)
    assert episodes
    texts = ["".join(tokenizer.decode(p) for p in e.history) + tokenizer.decode(e.query + e.target) for e in episodes]
    for text in texts:
        assert PASSWORD not in text and KEY not in text and KEY[:12] not in text
    assert any("url=\"https://deploy:<redacted:Basic Auth Credentials>@pypi.acme/simple\"" in text for text in texts)
    assert any("def div" in text for text in texts)
    assert any("API_KEY = \"<redacted:" in text for text in texts)
