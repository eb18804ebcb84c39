"""The write policy: ignore files, ignored directories, secrets, binaries, size, conventions."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from dmem_lsp.workspace.policy import Policy, is_convention_file, secret_in_text


@pytest.fixture
def policy(tmp_path):
    (tmp_path / ".gitignore").write_text("*.log\n/generated/\n!keep.log\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / ".gitignore").write_text("local_*.py\n")
    (tmp_path / ".dmemignore").write_text("private/\n")
    return Policy(tmp_path, max_file_bytes=2048)


@pytest.mark.parametrize(
    "relative, reason",
    [
        ("debug.log", ".gitignore"),
        ("generated/api.py", ".gitignore"),
        ("pkg/local_settings.py", ".gitignore"),
        ("private/notes.md", ".dmemignore"),
        (".git/config", "ignored directory"),
        ("node_modules/x/package.json", "ignored directory"),
        (".venv/lib/site.py", "ignored directory"),
        ("build/out.py", "ignored directory"),
        (".env", "secrets"),
        (".env.production", "secrets"),
        ("deploy/server.pem", "secrets"),
        ("id_ed25519", "secrets"),
        ("aws/credentials", "secrets"),
    ],
)
def test_refused_by_path(policy, tmp_path, relative, reason):
    refusal = policy.check_path(tmp_path / relative)
    assert refusal is not None and reason in refusal.reason


@pytest.mark.parametrize("relative", ["keep.log", "src/app.py", "pkg/settings.py", "README.md"])
def test_allowed_by_path(policy, tmp_path, relative):
    assert policy.check_path(tmp_path / relative) is None


def test_files_by_content(policy, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.bin").write_bytes(b"\x00\x01")
    (tmp_path / "big.py").write_text("x" * 4096)
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "key.txt").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    assert policy.check_file(tmp_path / "a.py") == ("x = 1\n", None)
    assert "binary" in policy.check_file(tmp_path / "b.bin")[1].reason
    assert "size cap" in policy.check_file(tmp_path / "big.py")[1].reason
    assert "binary" in policy.check_file(tmp_path / "latin.txt")[1].reason
    assert "private key" in policy.check_file(tmp_path / "key.txt")[1].reason
    assert "cannot be read" in policy.check_file(tmp_path / "missing.py")[1].reason


def test_reload_sees_a_changed_ignore_file(policy, tmp_path):
    assert policy.check_path(tmp_path / "notes.md") is None
    (tmp_path / ".dmemignore").write_text("notes.md\n")
    policy.reload()
    assert policy.check_path(tmp_path / "notes.md") is not None


@pytest.mark.parametrize(
    "text",
    [
        "AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP",
        "token = 'ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8'",
        "OPENAI_API_KEY=sk-proj-abcdefghij1234567890ABCD",
        "secret: 'q8Zr4Kp2Vx9Lm3Nw7Tb5Yc1Hd6Fg0Js8Ua4Ie2Ro'",
    ],
)
def test_secrets_in_text(text):
    assert secret_in_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "def add(a, b):\n    return a + b\n",
        "sha = '3f786850e387550fdab836ed7e6dc881de23001b'",  # a git hash: lowercase hex only
        "very_long_identifier_name_for_a_function_in_this_module()",
    ],
)
def test_ordinary_code_is_not_a_secret(text):
    assert secret_in_text(text) is None


@pytest.mark.parametrize(
    "path, expected",
    [
        ("pyproject.toml", True), ("setup.cfg", True), (".editorconfig", True), ("README.md", True),
        ("docs/CONTRIBUTING.rst", True), ("STYLE.md", True), ("web/tsconfig.json", True), ("Cargo.toml", True),
        (".eslintrc.json", True), ("src/app.py", False), ("notes.md", False), ("data.json", False),
    ],
)
def test_convention_files(path, expected):
    assert is_convention_file(PurePosixPath(path)) is expected
