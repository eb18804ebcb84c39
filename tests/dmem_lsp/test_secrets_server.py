"""Planted secrets against the real server: nothing secret reaches a write pass, from any source.

A temp workspace holds convention files with passwords in URLs and in ``curl -u``, a link that
leads outside the folder and one that leads nowhere; the client then edits a docker-compose
file to add ``POSTGRES_PASSWORD``, edits a binary and an over-size document, accepts a
completion holding a hex token, and sends debug steps holding passwords. Every ``written``
event must carry exactly the token count of the *redacted* text (computed here with the same
policy and the model's tokenizer, and checked to differ from the secret text's count), every
refusal must name its detector, and no secret may appear in an event or in the audit log.
"""

from __future__ import annotations

import asyncio
import difflib
import json
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types

from dmem_lsp.workspace.policy import Policy
from tests.dmem_lsp.lsp import TIMEOUT, plain, server_env, start, stop, wait_for_memory, wait_for_status

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_FILE_BYTES = 8192
OPTIONS = {"memory": {"editDebounceMs": 0, "saveDebounceMs": 0, "maxFileBytes": MAX_FILE_BYTES}}
SECRETS = (
    "Hunter2Passw0rdQ", "CiDbPass77", "AdminPkgPw_2024", "TwoDiskPw_2024", "ComposePw_31",
    "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", "hunter2hunter2", "NotifDbPass_9", "OutsideLinkPw_5",
)
FILES = {
    "setup.py": (
        'from setuptools import setup\n\nsetup(\n    name="acme",\n'
        '    url="https://deploy:Hunter2Passw0rdQ@pypi.acme.internal/simple",\n    packages=["acme"],\n)\n'
    ),
    "tox.ini": (
        "[tox]\nenvlist = py311\n\n[testenv]\ndeps = pytest\n"
        "setenv =\n    DATABASE_URL = postgres://ci:CiDbPass77@db/test\ncommands = pytest -q\n"
    ),
    "package.json": (
        '{\n  "name": "acme-web",\n  "scripts": {\n    "test": "vitest",\n'
        '    "publish": "curl -u admin:AdminPkgPw_2024 -T dist.tgz https://repo.acme.internal/upload"\n  }\n}\n'
    ),
    "pyproject.toml": '[tool.ruff]\nline-length = 100\n',
}
COMPOSE = "services:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: ci\n"
COMPOSE_EDITED = (
    COMPOSE + "      POSTGRES_DB: acme\n      POSTGRES_PASSWORD: ComposePw_31\n    ports:\n      - 5432:5432\n"
)


class Box:
    client = None
    workspace: Path
    refused: Path
    odd: Path
    huge: Path
    data: Path
    tokenizer = None
    policy: Policy


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(talkative_model, talkative_adapter, tmp_path_factory):
    from transformers import AutoTokenizer

    box = Box()
    box.workspace = tmp_path_factory.mktemp("planted")
    box.data = tmp_path_factory.mktemp("data")
    outside = tmp_path_factory.mktemp("elsewhere") / "editorconfig"
    outside.write_text("root = true\n# password: OutsideLinkPw_5\n")
    for name, text in FILES.items():
        (box.workspace / name).write_text(text)
    (box.workspace / ".editorconfig").symlink_to(outside)
    (box.workspace / "CONTRIBUTING.md").symlink_to(box.workspace / "gone.md")
    (box.workspace / "src").mkdir()
    box.refused = tmp_path_factory.mktemp("refused")  # its config is not TOML: no memory at all
    (box.refused / ".dmem").mkdir()
    (box.refused / ".dmem" / "config.toml").write_text("[memory\n")
    box.odd = tmp_path_factory.mktemp("odd")  # config.toml is a directory
    (box.odd / ".dmem" / "config.toml").mkdir(parents=True)
    box.huge = tmp_path_factory.mktemp("huge")
    (box.huge / ".dmem").mkdir()
    (box.huge / ".dmem" / "config.toml").write_text("[memory]\nmax-file-bytes = 1000000000000\n")
    box.policy = Policy(box.workspace.resolve(), MAX_FILE_BYTES)
    box.tokenizer = AutoTokenizer.from_pretrained(str(talkative_model))
    args = ["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"]
    folders = [box.workspace, box.refused, box.odd, box.huge]
    box.client, _ = await start(args, server_env(box.data), OPTIONS, folders)
    status = await wait_for_status(box.client, "ready", "error")
    assert status["state"] == "ready", status["message"]
    yield box
    await stop(box.client)


def tokens(box: Box, text: str) -> int:
    return len(box.tokenizer.encode(text, add_special_tokens=False))


def expect_written(box: Box, event: dict, header: str, text: str, name: str | None) -> None:
    """``event`` wrote ``header`` + ``text`` with its secrets redacted, not the text as it was."""
    verdict = box.policy.check_text(text, name)
    assert verdict.text is not None and verdict.redacted, f"{event['source']}: expected a redaction"
    assert event["written"] == tokens(box, header + verdict.text)
    assert event["written"] != tokens(box, header + text)  # the check above could tell the two apart
    assert event["redacted"] == list(verdict.redacted)
    assert not any(secret in verdict.text for secret in SECRETS)


def uri(box: Box, relative: str) -> str:
    return (box.workspace / relative).as_uri()


async def command(client, name: str, *arguments):
    params = types.ExecuteCommandParams(command=name, arguments=list(arguments))
    return plain(await asyncio.wait_for(client.workspace_execute_command_async(params), TIMEOUT))


def written(client, source: str, after: int = 0):
    return wait_for_memory(client, lambda e: e["event"] == "written" and e.get("source") == source, after)


def skipped(client, source: str, after: int = 0):
    return wait_for_memory(client, lambda e: e["event"] == "skipped" and e.get("source") == source, after)


async def test_convention_files_are_learned_redacted_and_links_skipped(box):
    client = box.client
    for name in ("setup.py", "tox.ini", "package.json"):
        event = await written(client, name)
        assert event["store"] == "conventions"
        expect_written(box, event, f"Project file {name}:\n", FILES[name], name)
    clean = await written(client, "pyproject.toml")
    assert (
        clean["written"] == tokens(box, "Project file pyproject.toml:\n" + FILES["pyproject.toml"])
        and "redacted" not in clean
    )
    assert "symbolic link that leads outside" in (await skipped(client, ".editorconfig"))["reason"]
    assert "dangling symbolic link" in (await skipped(client, "CONTRIBUTING.md"))["reason"]


async def test_a_convention_file_changed_on_disk_is_redacted_again(box):
    client = box.client
    after = len(client.memory_events)
    text = FILES["tox.ini"] + "\n[testenv:upload]\ncommands = curl -u admin:TwoDiskPw_2024 -T dist.tgz https://repo\n"
    (box.workspace / "tox.ini").write_text(text)
    event = await written(client, "tox.ini", after)
    expect_written(box, event, "Project file tox.ini:\n", text, "tox.ini")


async def test_an_edit_adding_a_password_is_written_redacted(box):
    client = box.client
    after = len(client.memory_events)
    compose = uri(box, "docker-compose.yml")
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=compose, language_id="yaml", version=1, text=COMPOSE)))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=compose, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=COMPOSE_EDITED)]))
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=compose)))
    event = await written(client, "docker-compose.yml", after)
    assert event["store"] == "edits"
    diff = "".join(
        difflib.unified_diff(
            COMPOSE.splitlines(True), COMPOSE_EDITED.splitlines(True), "docker-compose.yml", "docker-compose.yml", n=2
        )
    )
    expect_written(box, event, "Edit to docker-compose.yml:\n", diff, "docker-compose.yml")


@pytest.mark.parametrize(
    "relative, before, after, reason",
    [
        ("src/blob.dat", "head\x00\x01\x02", "head\x00\x01\x02\x03", "binary"),
        ("src/big.py", "x = 1\n" * 2000, "x = 1\n" * 2001, "size cap"),  # 12 KB > the 8 KB cap
    ],
    ids=["binary", "over the cap"],
)
async def test_binary_and_oversize_edits_are_refused(box, relative, before, after, reason):
    client = box.client
    start_at = len(client.memory_events)
    document = uri(box, relative)
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=document, language_id="plaintext", version=1, text=before)))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=document, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=after)]))
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=document)))
    assert reason in (await skipped(client, relative, start_at))["reason"]


async def test_an_accepted_completion_holding_a_token_is_refused(box):
    client = box.client
    after = len(client.memory_events)
    app = uri(box, "src/app.py")
    await command(client, "dmem.acceptCompletion", app, "token = 'a94a8fe5ccb19ba61c4c0873d391e987982fbbd3'")
    event = await skipped(client, "src/app.py", after)
    assert event["kind"] == "accepted completion" and "HexHighEntropyString" in event["reason"]


async def test_debug_steps_holding_passwords_are_refused_or_redacted(box):
    client = box.client
    result = await command(client, "dmem.rememberDebugStep", "password: hunter2hunter2")
    assert result["tokens"] == 0 and "KeywordDetector" in result["reason"]
    after = len(client.memory_events)
    trace = "Traceback (most recent call last):\n  File \"db.py\", line 8, in connect\n    raise AuthError(url)\n"
    step = f"{trace}AuthError: pg_hba.conf rejected the login of user ci with DB_PASS=NotifDbPass_9\n"
    client.protocol.notify("dmem/debugStep", {"text": step, "kind": "test output"})
    event = await written(client, "editor", after)
    expect_written(box, event, "Debugging step (test output):\n", step, None)


async def test_no_secret_in_any_event_or_in_the_audit_log(box):
    client = box.client
    (folder,) = (await command(client, "dmem.memoryStatus", uri(box, "setup.py")))["folders"]
    await command(client, "dmem.rememberDebugStep", "a plain step to make one more save")
    last = max(i for i, e in enumerate(client.memory_events) if e["event"] == "written")
    await wait_for_memory(client, lambda e: e["event"] == "saved", last + 1)
    manifest = json.loads((Path(folder["directory"]) / "manifest.json").read_text())
    audit = json.dumps(manifest["audit"])
    events = json.dumps(client.memory_events)
    for secret in SECRETS:
        assert secret not in audit and secret not in events, secret
    entries = {(e["source"], e.get("kind")): e for e in manifest["audit"]}
    assert "BasicAuthDetector" in " ".join(entries[("setup.py", "convention")]["redacted"])
    assert "dmem-lsp rule" in " ".join(entries[("package.json", "convention")]["redacted"])
    assert "detect-secrets" in entries[("src/app.py", "accepted completion")]["skipped"]
    assert "binary" in entries[("src/blob.dat", "edit")]["skipped"]
    refused = [e for e in manifest["audit"] if "skipped" in e and e["skipped"].startswith("refused: ")]
    assert refused and all("detect-secrets " in e["skipped"] or "dmem-lsp rule" in e["skipped"] for e in refused)


async def test_folders_without_memory_or_with_odd_configs_say_why(box):
    client = box.client
    await wait_for_memory(client, lambda e: e["folder"] == box.refused.resolve().as_uri() and e["event"] == "refused")
    for folder in (box.odd, box.huge):
        await wait_for_memory(
            client, lambda e, f=folder: e["folder"] == f.resolve().as_uri() and e["event"] == "opened"
        )
    step = {"uri": (box.refused / "app.py").as_uri(), "text": "a step", "kind": "note"}
    result = await command(client, "dmem.rememberDebugStep", step)
    assert result["tokens"] == 0 and "no memory for" in result["reason"] and "not valid TOML" in result["reason"]
    outside = await command(client, "dmem.rememberDebugStep", {"uri": "file:///nowhere/x.py", "text": "a step"})
    assert outside["tokens"] == 0 and "outside every workspace folder" in outside["reason"]
    messages = [message.message for message in client.messages]
    assert any("config.toml is a directory" in m and str(box.odd.resolve()) in m for m in messages), messages
    assert any("max-file-bytes" in m and "≤ 16777216" in m and "1000000000000" in m for m in messages), messages
