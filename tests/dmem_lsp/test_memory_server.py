"""Workspace memory in the real server: each source writes only its store, policy refusals,
persistence across restarts, terminal resets, a second server, corrupt and foreign files.

Each project is a folder in a temp dir with XDG_DATA_HOME in another; the server is a real
subprocess (pytest-lsp) with a tiny model, watching the folder with watchdog. Tests that
only add to memory share one server (``box``) and start by waiting until its memory is
settled (the state on disk is the state the server reports); tests that stop, restart or
look at a server's first start get one of their own (``fresh``). No test relies on
another having run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from lsprotocol import types
from safetensors.torch import load_file

from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.status_page import status_markdown
from tests.dmem_lsp.lsp import TIMEOUT, plain, server_env, start, stop, wait_for_memory, wait_for_status

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPTIONS = {"completion": {"maxTokens": 4, "debounceMs": 0}, "memory": {"editDebounceMs": 0, "saveDebounceMs": 0}}
APP = "def add(a, b):\n    return a + b\n"
LAST_CONVENTION = "tools/pyproject.toml"
"""The last convention file a folder's opening looks at (the deepest): it is refused (.gitignore)."""


class Box:
    """One project and its running server: the workspace, the data home, the client."""

    client = None
    workspace: Path
    data: Path
    args: list[str]


def make_project(w: Path) -> None:
    (w / "pyproject.toml").write_text('[tool.ruff]\nline-length = 100\n')
    (w / "README.md").write_text("# Project\nTests live in qa/. Use snake_case.\n")
    (w / "CONTRIBUTING.md").write_bytes(b"binary\0\1\2 contributing")
    (w / ".gitignore").write_text("*.log\ntools/\n")
    (w / "tools").mkdir()
    (w / "tools" / "pyproject.toml").write_text("[tool.black]\n")
    (w / "src").mkdir()
    (w / "src" / "app.py").write_text(APP)
    (w / ".env").write_text("API_KEY=abc\n")


async def new_box(model: Path, adapter: Path, tmp_path_factory, workspace: Path | None = None) -> Box:
    box = Box()
    box.workspace = workspace or tmp_path_factory.mktemp("project")
    box.workspace.mkdir(parents=True, exist_ok=True)
    box.data = tmp_path_factory.mktemp("data")
    make_project(box.workspace)
    box.args = ["--model", str(model), "--adapter", str(adapter), "--device", "cpu"]
    box.client = await launch(box)
    return box


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(talkative_model, talkative_adapter, tmp_path_factory):
    """The shared server: tests on it only add to memory (or reset what they wrote)."""
    box = await new_box(talkative_model, talkative_adapter, tmp_path_factory)
    yield box
    if box.client is not None:
        await stop(box.client)


@pytest_asyncio.fixture(loop_scope="module")
async def fresh(talkative_model, talkative_adapter, tmp_path_factory):
    """A project and server of the test's own."""
    box = await new_box(talkative_model, talkative_adapter, tmp_path_factory)
    yield box
    if box.client is not None:
        await stop(box.client)


async def launch(box: Box, owner: bool = True):
    """Start a server on the box's project; with ``owner``, once it has looked at every convention file."""
    client, _ = await start(box.args, server_env(box.data), OPTIONS, [box.workspace])
    status = await wait_for_status(client, "ready", "error")
    assert status["state"] == "ready", status["message"]
    await wait_for_memory(client, lambda e: e["event"] == "opened")
    if owner:
        await wait_for_memory(client, lambda e: e["event"] == "skipped" and e["source"] == LAST_CONVENTION)
        await settled(client)
    return client


def uri(box: Box, relative: str) -> str:
    return (box.workspace / relative).as_uri()


async def command(client, name: str, *arguments):
    params = types.ExecuteCommandParams(command=name, arguments=list(arguments))
    return plain(await asyncio.wait_for(client.workspace_execute_command_async(params), TIMEOUT))


async def status(client) -> dict:
    answer = await command(client, "dmem.memoryStatus")
    (folder,) = answer["folders"]
    assert answer["markdown"] == status_markdown(answer["folders"])  # the page is of the facts answered
    return folder


def disk_states(folder: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder["directory"]) / "state.safetensors"))


def hashes(folder: dict) -> dict[str, str]:
    return {store: info["sha256"] for store, info in folder["stores"].items()}


async def settled(client) -> dict:
    """The folder's status once the state on disk is the state the server holds.

    Saves follow writes (debounced), so until the last "saved" after a write the file may
    hold an older state: wait for the next "saved" and look again.
    """
    while True:
        seen = len(client.memory_events)
        folder = await status(client)
        try:
            on_disk = {store: state_sha256(t) for store, t in disk_states(folder).items()}
        except FileNotFoundError:
            on_disk = None
        if on_disk == hashes(folder):
            return folder
        await wait_for_memory(client, lambda e: e["event"] == "saved", seen)


async def written(client, store: str, after: int) -> dict:
    return await wait_for_memory(client, lambda e: e["event"] == "written" and e["store"] == store, after)


def assert_only_changed(before: dict, now: dict, store: str) -> None:
    assert not torch.equal(now[store], before[store]), f"{store} did not change"
    for other in set(before) - {store}:
        assert torch.equal(now[other], before[other]), f"{other} changed too"


def run_cli(box: Box, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(box.data)}
    return subprocess.run(
        [sys.executable, "-m", "dmem_lsp", *args], capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
    )


async def test_opening_learns_conventions_and_refuses_what_policy_forbids(fresh):
    client = fresh.client  # launch() waited for the last convention file and for the save after it
    for source, reason in (("CONTRIBUTING.md", "binary"), (LAST_CONVENTION, ".gitignore")):
        skipped = await wait_for_memory(client, lambda e, s=source: e["event"] == "skipped" and e["source"] == s)
        assert reason in skipped["reason"]
    sources = {e["source"] for e in client.memory_events if e["event"] == "written"}
    assert sources == {"README.md", "pyproject.toml"}
    assert all(e["store"] == "conventions" for e in client.memory_events if e["event"] == "written")
    folder = await settled(client)
    assert folder["stores"]["conventions"]["tokens"] > 0
    assert folder["stores"]["edits"]["tokens"] == folder["stores"]["debug"]["tokens"] == 0
    on_disk = disk_states(folder)
    assert {store: state_sha256(t) for store, t in on_disk.items()} == hashes(folder)
    assert torch.count_nonzero(on_disk["conventions"]) and not torch.count_nonzero(on_disk["edits"])


async def test_an_edit_in_the_editor_changes_only_edits(box):
    client = box.client
    before = disk_states(await settled(client))
    after = len(client.memory_events)
    path = box.workspace / "src" / "edited.py"
    path.write_text(APP)
    doc = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=doc, language_id="python", version=1, text=APP)))
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=doc, version=2),
            content_changes=[
                types.TextDocumentContentChangeWholeDocument(text=APP + "\n\ndef sub(a, b):\n    return a - b\n")
            ],
        )
    )
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=doc)))
    assert (await written(client, "edits", after))["source"] == "src/edited.py"
    assert_only_changed(before, disk_states(await settled(client)), "edits")


def rewrite_in_place(path: Path, text: str) -> None:
    """Overwrite a file as an editor saving in place does, without an empty moment between."""
    with open(path, "r+", encoding="utf-8") as f:
        f.write(text)
        f.truncate()


async def test_a_convention_file_changed_on_disk_changes_only_conventions(box):
    client = box.client
    before = disk_states(await settled(client))
    after = len(client.memory_events)
    rewrite_in_place(box.workspace / "pyproject.toml", '[tool.ruff]\nline-length = 88\nindent-width = 4\n')
    assert (await written(client, "conventions", after))["source"] == "pyproject.toml"
    assert_only_changed(before, disk_states(await settled(client)), "conventions")

    # an atomic save (write a temporary file, rename it over) arrives as a move
    before = disk_states(await settled(client))
    after = len(client.memory_events)
    temporary = box.workspace / ".pyproject.toml.swp"
    temporary.write_text('[tool.ruff]\nline-length = 79\n')
    os.replace(temporary, box.workspace / "pyproject.toml")
    assert (await written(client, "conventions", after))["source"] == "pyproject.toml"
    assert_only_changed(before, disk_states(await settled(client)), "conventions")


async def test_remembering_a_debug_step_changes_only_debug(box):
    client = box.client
    before = disk_states(await settled(client))
    trace = "Traceback (most recent call last):\n  File 'src/app.py', line 2\nZeroDivisionError: division by zero"
    result = await command(
        client, "dmem.rememberDebugStep", {"uri": uri(box, "src/app.py"), "text": trace, "kind": "stack trace"}
    )
    assert result["tokens"] > 0  # answered once written
    assert_only_changed(before, disk_states(await settled(client)), "debug")


async def test_accepted_completions_debug_notifications_and_editor_resets(box):
    client = box.client
    app = uri(box, "src/app.py")
    result = await asyncio.wait_for(client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=app), position=types.Position(line=1, character=4),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )), TIMEOUT)
    accept = result.items[0].command
    assert accept.command == "dmem.acceptCompletion" and accept.arguments[0] == app
    before = disk_states(await settled(client))
    after = len(client.memory_events)
    await command(client, accept.command, *accept.arguments)
    event = await written(client, "edits", after)
    assert event["kind"] == "accepted completion"
    assert_only_changed(before, disk_states(await settled(client)), "edits")

    before = disk_states(await settled(client))
    after = len(client.memory_events)
    client.protocol.notify(
        "dmem/debugStep", {"uri": app, "text": "test_add FAILED: assert 3 == 4", "kind": "test failure"}
    )
    event = await wait_for_memory(client, lambda e: e["event"] == "written", after)
    assert (event["store"], event["kind"]) == ("debug", "test failure")
    assert_only_changed(before, disk_states(await settled(client)), "debug")

    reset = await command(client, "dmem.resetMemory", "debug")
    assert reset["stores"] == ["debug"]
    folder = await settled(client)
    assert folder["stores"]["debug"]["tokens"] == 0 and not torch.count_nonzero(disk_states(folder)["debug"])
    assert torch.count_nonzero(disk_states(folder)["edits"])


async def test_secrets_ignored_files_and_binaries_never_change_any_state(box):
    client = box.client
    before = hashes(await settled(client))
    after = len(client.memory_events)
    env = uri(box, ".env")
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=env, language_id="dotenv", version=1, text="API_KEY=abc\n")))
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=env, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text="API_KEY=abc\nTOKEN=x\n")],
    ))
    client.text_document_did_save(types.DidSaveTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=env)))
    (box.workspace / "tools" / "pyproject.toml").write_text("[tool.black]\nline-length = 1\n")
    (box.workspace / "CONTRIBUTING.md").write_bytes(b"still\0binary")
    secret = "token = 'ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8'"
    result = await command(client, "dmem.rememberDebugStep", secret)
    assert result["tokens"] == 0
    reasons = {}
    for source in (".env", "tools/pyproject.toml", "CONTRIBUTING.md", "editor"):
        event = await wait_for_memory(client, lambda e, s=source: e["event"] == "skipped" and e["source"] == s, after)
        reasons[source] = event["reason"]
    assert "secrets" in reasons[".env"] and ".gitignore" in reasons["tools/pyproject.toml"]
    assert "binary" in reasons["CONTRIBUTING.md"] and "token" in reasons["editor"]
    assert not [e for e in client.memory_events[after:] if e["event"] == "written"]
    assert hashes(await settled(client)) == before
    audit = (await status(client))["skipped"]
    assert any(entry["source"] == ".env" for entry in audit)


async def test_a_reset_from_a_terminal_reaches_the_running_server(box):
    client = box.client
    after = len(client.memory_events)
    await command(client, "dmem.acceptCompletion", uri(box, "src/app.py"), "return a + b")
    await written(client, "edits", after)
    before = hashes(await settled(client))
    assert before["edits"] != state_sha256(torch.zeros(2, 1, 8, 8))
    result = await asyncio.to_thread(
        run_cli, box, "--reset-memory", "--store", "edits", "--workspace", str(box.workspace)
    )
    assert result.returncode == 0, result.stderr
    assert "by the running server" in result.stdout
    folder = await settled(client)
    now = hashes(folder)
    assert now["edits"] == state_sha256(torch.zeros(2, 1, 8, 8)) and folder["stores"]["edits"]["tokens"] == 0
    assert now["conventions"] == before["conventions"] and now["debug"] == before["debug"]
    assert not torch.count_nonzero(disk_states(folder)["edits"])
    report = await asyncio.to_thread(run_cli, box, "memory", "status", "--workspace", str(box.workspace))
    assert report.returncode == 0 and "Server: running: pid" in report.stdout and "| conventions |" in report.stdout


async def test_a_second_server_opens_the_memory_read_only(box):
    second = await launch(box, owner=False)
    try:
        opened = [e for e in second.memory_events if e["event"] == "opened"]
        assert opened[0]["readOnly"] is True
        assert any("read-only" in m.message for m in second.messages)
        assert hashes(await status(second)) == hashes(await settled(box.client))
        page = (await command(second, "dmem.memoryStatus"))["markdown"]
        assert "**read-only**: another dmem-lsp holds it" in page, page
        result = await command(second, "dmem.rememberDebugStep", "a step")
        assert result["tokens"] == 0
    finally:
        await stop(second)


async def test_a_restart_restores_every_state_bit_identically(fresh):
    result = await command(fresh.client, "dmem.rememberDebugStep", "the fix: run migrations before the tests")
    assert result["tokens"] > 0
    before = hashes(await settled(fresh.client))
    await stop(fresh.client)
    fresh.client = None
    fresh.client = await launch(fresh)
    folder = await status(fresh.client)
    assert hashes(folder) == before
    # unchanged files are not written again
    assert not [e for e in fresh.client.memory_events if e["event"] == "written"]
    assert {store: state_sha256(t) for store, t in disk_states(folder).items()} == before


async def test_folders_added_and_removed_at_run_time(box, tmp_path):
    client = box.client
    extra = tmp_path / "second"
    extra.mkdir()
    (extra / "setup.cfg").write_text("[flake8]\nmax-line-length = 99\n")
    after = len(client.memory_events)
    added = types.WorkspaceFoldersChangeEvent(
        added=[types.WorkspaceFolder(uri=extra.as_uri(), name="second")], removed=[]
    )
    client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(event=added))
    await wait_for_memory(client, lambda e: e["event"] == "written" and e["folder"] == extra.as_uri(), after)
    folders = (await command(client, "dmem.memoryStatus"))["folders"]
    assert {f["folder"] for f in folders} == {box.workspace.as_uri(), extra.as_uri()}
    assert [f for f in folders if f["folder"] == box.workspace.as_uri()][0]["stores"]["conventions"]["tokens"] > 0
    removed = types.WorkspaceFoldersChangeEvent(
        added=[], removed=[types.WorkspaceFolder(uri=extra.as_uri(), name="second")]
    )
    after = len(client.memory_events)
    client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(event=removed))
    await wait_for_memory(client, lambda e: e["event"] == "saved" and e["folder"] == extra.as_uri(), after)
    folders = (await command(client, "dmem.memoryStatus"))["folders"]
    assert [f["folder"] for f in folders] == [box.workspace.as_uri()]


async def test_export_and_import_refuse_another_adapter(box, tmp_path):
    await settled(box.client)
    snapshot = tmp_path / "debug.safetensors"
    result = await asyncio.to_thread(
        run_cli, box, "memory", "export", "--store", "debug", "--output", str(snapshot),
        "--workspace", str(box.workspace),
    )
    assert result.returncode == 0, result.stderr
    other = tmp_path / "other"
    other.mkdir()
    imported = await asyncio.to_thread(run_cli, box, "memory", "import", str(snapshot), "--workspace", str(other))
    assert imported.returncode == 0, imported.stderr
    from dmem_lsp.workspace.snapshots import read_snapshot, write_snapshot

    store, tensor, fingerprint, tokens = read_snapshot(snapshot)
    forged = tmp_path / "forged.safetensors"
    write_snapshot(forged, store, tensor, {**fingerprint, "adapter_sha256": "0" * 64}, tokens)
    refused = await asyncio.to_thread(run_cli, box, "memory", "import", str(forged), "--workspace", str(box.workspace))
    assert refused.returncode == 1 and "another adapter" in refused.stderr


async def test_a_corrupt_state_file_is_kept_aside_and_memory_starts_empty(fresh):
    assert (await command(fresh.client, "dmem.rememberDebugStep", "a step"))["tokens"] > 0
    directory = Path((await settled(fresh.client))["directory"])
    await stop(fresh.client)
    fresh.client = None
    (directory / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    fresh.client = await launch(fresh)
    assert any("cannot be read" in m.message for m in fresh.client.messages)
    assert list(directory.glob("state.safetensors.corrupt-*"))
    folder = await status(fresh.client)
    assert folder["stores"]["edits"]["tokens"] == 0 and folder["stores"]["debug"]["tokens"] == 0


async def test_memory_from_another_adapter_is_kept_for_it(fresh):
    directory = Path((await settled(fresh.client))["directory"])
    await stop(fresh.client)
    fresh.client = None
    fresh.args = [*fresh.args[:2], "--adapter", "none", "--device", "cpu"]
    fresh.client = await launch(fresh)
    assert any("made with another" in m.message for m in fresh.client.messages)
    assert list(directory.glob("adapters/*/state.safetensors"))  # kept for when that adapter comes back


async def test_a_project_kept_inside_a_folder_named_like_an_ignored_one_is_watched(
    talkative_model, talkative_adapter, tmp_path_factory
):
    """Ignored folder names (``.cache``, ``build``) count inside the project only: a project in
    ``~/.cache/...`` (where ``dmem-lsp demo`` lays out its own) or ``~/build/...`` is watched."""
    workspace = tmp_path_factory.mktemp("home") / ".cache" / "build" / "project"
    box = await new_box(talkative_model, talkative_adapter, tmp_path_factory, workspace)
    client = box.client
    try:
        after = len(client.memory_events)
        (box.workspace / "build").mkdir()
        (box.workspace / "build" / "STYLE.md").write_text("generated: not a convention of the project\n")
        rewrite_in_place(box.workspace / "README.md", "# Project\nTests live in spec/.\n")
        assert (await written(client, "conventions", after))["source"] == "README.md"
        await settled(client)
        assert not any(e.get("source", "").startswith("build/") for e in client.memory_events[after:])
    finally:
        await stop(client)
