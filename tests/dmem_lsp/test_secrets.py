"""The secret policy over a generated corpus: every planted secret is refused or redacted, look-alikes pass.

The corpus (``secret_corpus``) plants each kind of secret in several shapes (alone, in its file,
in free text, in a diff). A redacted text must hold none of the secret's characters runs; a
refused one is not written at all. Innocent look-alikes (git SHAs, lock-file hashes, references
to secrets kept elsewhere) must come back unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dmem_lsp.workspace import secret_scan
from dmem_lsp.workspace.policy import Policy
from tests.dmem_lsp.secret_corpus import KINDS, PRIVATE_KEYS, innocent, planted

PLANTS = planted(seed=0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return Policy(tmp_path_factory.mktemp("workspace"), max_file_bytes=262144)


def leaked(text: str, secret: str, window: int = 8) -> bool:
    """Whether ``text`` holds ``secret`` or any ``window`` characters of it in a row."""
    if len(secret) <= window:
        return secret in text
    return any(secret[i : i + window] in text for i in range(len(secret) - window + 1))


@pytest.mark.parametrize("kind", [*KINDS, *PRIVATE_KEYS])
def test_every_shape_of_a_secret_is_refused_or_redacted(policy, kind):
    plants = [plant for plant in PLANTS if plant.kind == kind]
    assert len(plants) >= 2
    for plant in plants:
        verdict = policy.check_text(plant.text, plant.name)
        if verdict.text is None:
            assert verdict.refusal.reason.startswith("refused: "), plant.id
            continue
        for secret in plant.secrets:
            assert not leaked(verdict.text, secret), f"{plant.id}: {verdict.text!r}"
        assert "<redacted:" in verdict.text and verdict.redacted, plant.id
        assert all("(detect-secrets " in label or "(dmem-lsp rule)" in label for label in verdict.redacted)


@pytest.mark.parametrize("name, text", innocent(), ids=lambda v: str(v)[:40])
def test_look_alikes_are_written_whole(policy, name, text):
    assert secret_scan.scan(text, name) == []
    assert policy.check_text(text, name) == (text, None)


def test_a_secret_in_a_file_is_redacted_and_the_detector_named(policy):
    text = '[tool.x]\nname = "pkg"\n' * 10 + 'index = "https://deploy:Hunter2Passw0rdQ@pypi.internal/simple"\n'
    verdict = policy.check_text(text, "setup.cfg")
    assert verdict.refusal is None and "Hunter2Passw0rdQ" not in verdict.text
    assert 'index = "https://deploy:<redacted:Basic Auth Credentials>@pypi.internal/simple"' in verdict.text
    assert verdict.redacted == ("Basic Auth Credentials (detect-secrets BasicAuthDetector)",)
    assert verdict.text.replace("<redacted:Basic Auth Credentials>", "Hunter2Passw0rdQ") == text


def test_a_text_that_is_mostly_secret_is_refused(policy):
    text, refusal = policy.check_text("password: hunter2hunter2")
    assert text is None and "makes up most of the text" in refusal.reason and "KeywordDetector" in refusal.reason


def test_a_private_key_is_refused_whole(policy):
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    text, refusal = policy.check_text("notes\n" * 200 + key)
    assert text is None and "private key" in refusal.reason


def test_the_same_secret_elsewhere_in_the_text_is_redacted_too(policy):
    text = "Deploy notes.\n" * 20 + "DB_PASSWORD=Falcon42xyz\nthen run: psql -c 'select 1' # Falcon42xyz again\n"
    verdict = policy.check_text(text, "README.md")
    assert verdict.text is not None and "Falcon42xyz" not in verdict.text


def test_lock_file_hashes_pass_but_keywords_in_them_do_not(policy):
    lock = (
        '{\n  "integrity": '
        '"sha512-QbRmJzjMU3WSfXpuMlgwGBRtmqUy/S34KLcnMrxNqXp7vZ6fk/ycU7SzyTaQKk0WOeGNwl4Z5pe3aIiyT2D8lw==",\n'
    )
    assert policy.check_text(lock, "package-lock.json") == (lock, None)
    with_url = lock + '  "resolved": "https://ci:CiLockPw_77@registry.internal/x.tgz"\n' + '  "name": "x",\n' * 20
    assert "CiLockPw_77" not in policy.check_text(with_url, "package-lock.json").text


def test_documents_over_the_cap_or_binary_are_refused_before_any_work(tmp_path):
    policy = Policy(tmp_path, max_file_bytes=4096)
    assert "size cap" in policy.check_document("x" * 50_000_000).reason
    assert "size cap" in policy.check_document("é" * 3000).reason  # 6,000 bytes in UTF-8
    assert policy.check_document("\x00\x01ELF").reason == "binary"
    assert policy.check_document("x = 1\n") is None


def test_links_that_lead_outside_or_nowhere_are_refused_with_a_reason(tmp_path):
    outside = tmp_path / "outside.cfg"
    outside.write_text("[x]\n")
    root = tmp_path / "workspace"
    root.mkdir()
    (root / "tox.ini").symlink_to(outside)
    (root / "setup.cfg").symlink_to(root / "missing.cfg")
    (root / ".editorconfig").write_text("root = true\n")
    (root / "mypy.ini").symlink_to(root / ".editorconfig")
    policy = Policy(root.resolve(), max_file_bytes=4096)
    assert "symbolic link that leads outside" in policy.check_file(root / "tox.ini")[1].reason
    assert "dangling symbolic link" in policy.check_file(root / "setup.cfg")[1].reason
    assert policy.check_file(root / "mypy.ini") == ("root = true\n", None)


def test_scans_on_several_threads_agree(policy):
    texts = [(plant.text, plant.name) for plant in PLANTS[:120]]
    expected = [policy.check_text(text, name) for text, name in texts]
    results: list[list] = [[] for _ in range(4)]

    def run(index: int) -> None:
        results[index] = [policy.check_text(text, name) for text, name in texts]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert all(result == expected for result in results)


def test_starting_the_server_does_not_import_detect_secrets():
    code = (
        "import sys, dmem_lsp.lsp.server, dmem_lsp.cli.main, dmem_lsp.workspace.policy, dmem_lsp.workspace.secret_scan;"
        " print('detect_secrets' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_the_benchmark_prints_every_secret_refused():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "secret_policy.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    total = len(PLANTS)
    assert f"secrets refused: {total} of {total}" in out.stdout
    assert f"look-alikes written whole: {len(innocent())} of {len(innocent())}" in out.stdout
