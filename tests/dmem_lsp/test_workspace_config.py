"""``.dmem/config.toml``: parsing, and a real server that honours it per folder.

The server tests run one subprocess over three folders, as a multi-root window would:
``team`` names an adapter committed inside the repository, ``hub`` names a Hugging Face
repo id at a revision (served offline from a hub cache laid out in a temp HF_HOME, through
the same ``snapshot_download`` a user's download takes), and ``other`` names an adapter
built for another backbone. The server's own setting is ``--adapter none``.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import pytest_asyncio
import torch
from lsprotocol import types
from safetensors.torch import load_file, safe_open

from dmem_lsp.runtime.settings import MemorySettings
from dmem_lsp.workspace.config import WorkspaceConfigError, read_workspace_config
from dmem_lsp.workspace.policy import Policy
from tests.dmem_lsp.lsp import (
    TIMEOUT,
    expected_completion,
    plain,
    server_env,
    start,
    stop,
    wait_for_memory,
    wait_for_status,
)

STORES = ("conventions", "debug", "edits")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_config(root: Path, text: str) -> Path:
    (root / ".dmem").mkdir(parents=True, exist_ok=True)
    path = root / ".dmem" / "config.toml"
    path.write_text(text)
    return path


# -- parsing ----------------------------------------------------------------------------------


def test_a_full_config_is_read_and_bad_values_are_named(tmp_path):
    (tmp_path / "tools" / "adapter").mkdir(parents=True)
    write_config(tmp_path, """
[adapter]
path = "tools/adapter"

[memory]
convention-file-tokens = 64
writeChunkTokens = 32
edit_debounce_ms = "soon"
colour = "blue"

[stores]
edits = false
debug = "no"
notes = true

[policy]
ignore = ["generated/"]
conventions = ["docs/*.txt"]
exclude = []

[extras]
""")
    config, warnings = read_workspace_config(tmp_path, STORES)
    assert config.adapter.name == str((tmp_path / "tools" / "adapter").resolve()) and config.adapter.revision is None
    assert str(config.path) in config.adapter.origin
    assert config.memory == {"convention_file_tokens": 64, "write_chunk_tokens": 32}
    assert config.stores == {"edits": False}
    assert not config.writes("edits") and config.writes("debug")
    assert (config.ignore, config.conventions) == (("generated/",), ("docs/*.txt",))
    text = "\n".join(warnings)
    for named in (
        "edit-debounce-ms", "'colour'", "debug expected true or false", "unknown store 'notes'", "'exclude'", "'extras'"
    ):
        assert named in text, named
    assert len(warnings) == 6


def test_a_folder_can_turn_writing_off_but_never_on(tmp_path):
    write_config(tmp_path, "[memory]\nenabled = true\nconvention-tokens = 100\n")
    config, _ = read_workspace_config(tmp_path)
    assert config.memory_settings(MemorySettings(enabled=False)).enabled is False
    assert config.memory_settings(MemorySettings()).convention_tokens == 100
    write_config(tmp_path, "[memory]\nenabled = false\n")
    config, _ = read_workspace_config(tmp_path)
    assert config.memory_settings(MemorySettings(enabled=True)).enabled is False
    assert read_workspace_config(tmp_path / "nowhere")[0].path is None  # no file: nothing changes


@pytest.mark.parametrize(
    "text, message",
    [
        ('[adapter]\npath = "../elsewhere"\n', "leads outside the repository"),
        ('[adapter]\npath = "/etc"\n', "leads outside the repository"),
        ('[adapter]\nrepo = "acme/adapter"\n', "needs a revision"),
        ('[adapter]\nrepo = "acme/adapter"\npath = "a"\nrevision = "v1"\n', "either path"),
        ('[adapter]\nrepo = "not a repo"\nrevision = "v1"\n', "repo id such as org/name"),
        ('[adapter]\npath = "a"\nrevision = "v1"\n', "revision goes with repo"),
        ('[adapter]\nrepo = "acme/adapter"\nrev = "v1"\n', "unknown keys rev"),
        ('[adapter\npath = "a"\n', "not valid TOML.*line 1"),
    ],
)
def test_an_unusable_config_is_an_error_naming_the_file(tmp_path, text, message):
    path = write_config(tmp_path, text)
    with pytest.raises(WorkspaceConfigError, match=message) as caught:
        read_workspace_config(tmp_path)
    assert str(path) in str(caught.value)


def test_policy_patterns_from_the_config(tmp_path):
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "api.py").write_text("x = 1\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rules.txt").write_text("use tabs\n")
    policy = Policy(tmp_path, 1 << 20, ignore=("generated/",), conventions=("docs/*.txt",))
    assert ".dmem/config.toml" in policy.check_path(tmp_path / "generated" / "api.py").reason
    assert policy.is_convention(policy.relative(tmp_path / "docs" / "rules.txt"))
    assert policy.is_convention(policy.relative(tmp_path / "pyproject.toml"))  # the built-in names still count
    assert not policy.is_convention(policy.relative(tmp_path / "generated" / "api.py"))


# -- the server -------------------------------------------------------------------------------

asyncio_module = pytest.mark.asyncio(loop_scope="module")

OPTIONS = {"completion": {"maxTokens": 12, "debounceMs": 0}, "memory": {"editDebounceMs": 0, "saveDebounceMs": 0}}
SOURCE = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return "


def publish_to_hub_cache(hf_home: Path, repo: str, revision: str, directory: Path) -> None:
    """Lay ``directory`` out as huggingface_hub's cache holds a download of ``repo`` at ``revision``."""
    cached = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(directory, cached / "snapshots" / COMMIT)
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / revision).write_text(COMMIT)


def adapter_sha256(directory: Path) -> str:
    import memory
    from dmem_lsp.runtime.adapters import tensors_sha256

    _, tensors, _ = memory.read_adapter(directory)
    return tensors_sha256({name: tensor.float() for name, tensor in tensors.items()})


class Box:
    client = None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(talkative_model, talkative_adapter, model_dirs, tmp_path_factory):
    import memory
    from tests.memory.helpers import strengthen
    from tests.tiny_models import load_tiny_model

    box = Box()
    base = tmp_path_factory.mktemp("folders")
    box.data, box.hf_home = tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("hf-home")
    box.team, box.hub, box.other = base / "team", base / "hub", base / "other"
    # team: the adapter committed in the repository, store and policy settings
    shutil.copytree(talkative_adapter, box.team / "tools" / "adapter")
    (box.team / "pyproject.toml").write_text('[tool.ruff]\nline-length = 100\nindent-width = 4\n' * 4)
    (box.team / "docs").mkdir()
    (box.team / "docs" / "rules.txt").write_text("Tests live in qa/. Functions use snake_case.\n")
    (box.team / "generated").mkdir()
    (box.team / "generated" / "README.md").write_text("# generated by protoc\n")
    (box.team / "app.py").write_text(SOURCE)
    write_config(box.team, """
[adapter]
path = "tools/adapter"

[memory]
convention-file-tokens = 16

[stores]
edits = false

[policy]
ignore = ["generated/"]
conventions = ["docs/*.txt"]
""")
    # hub: another adapter for the same backbone, from a (cached) Hugging Face repo at a revision
    mem = memory.attach(load_tiny_model(talkative_model), memory.DeltaMemConfig())
    strengthen(mem, seed=7)
    box.hub_adapter = memory.save_adapter(
        mem, tmp_path_factory.mktemp("hub-adapter") / "a", base_model_id="tiny/talkative"
    )
    publish_to_hub_cache(box.hf_home, "team/adapter", "v1", box.hub_adapter)
    box.hub.mkdir()
    (box.hub / "setup.cfg").write_text("[flake8]\nmax-line-length = 99\n")
    (box.hub / "app.py").write_text(SOURCE)
    write_config(box.hub, '[adapter]\nrepo = "team/adapter"\nrevision = "v1"\n')
    # other: an adapter built for another backbone
    other = memory.attach(load_tiny_model(model_dirs["smollm3"]), memory.DeltaMemConfig())
    memory.save_adapter(other, box.other / "adapter", base_model_id="tiny/smollm3")
    (box.other / "setup.cfg").write_text("[flake8]\nmax-line-length = 79\n")
    (box.other / "app.py").write_text(SOURCE)
    write_config(box.other, '[adapter]\npath = "adapter"\n')

    box.model = talkative_model
    env = {**server_env(box.data), "HF_HOME": str(box.hf_home)}
    args = ["--model", str(talkative_model), "--adapter", "none", "--device", "cpu"]
    box.client, _ = await start(args, env, OPTIONS, [box.team, box.hub, box.other])
    status = await wait_for_status(box.client, "ready", "error")
    assert status["state"] == "ready", status["message"]
    for folder in (box.team, box.hub):
        await wait_for_memory(box.client, lambda e, f=folder: e["event"] == "saved" and e["folder"] == f.as_uri())
    yield box
    if box.client is not None:
        await stop(box.client)


async def command(client, name: str, *arguments):
    params = types.ExecuteCommandParams(command=name, arguments=list(arguments))
    return plain(await asyncio.wait_for(client.workspace_execute_command_async(params), TIMEOUT))


async def folder_status(client, root: Path) -> dict:
    (folder,) = (await command(client, "dmem.memoryStatus", {"folder": root.as_uri()}))["folders"]
    return folder


def fingerprint_on_disk(folder: dict) -> dict:
    import json

    with safe_open(str(Path(folder["directory"]) / "state.safetensors"), "pt") as f:
        return json.loads(f.metadata()["fingerprint"])


async def completion(client, path: Path) -> str:
    lines = SOURCE.splitlines()
    params = types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=path.as_uri()),
        position=types.Position(line=len(lines) - 1, character=len(lines[-1])),
    )
    listed = await asyncio.wait_for(client.text_document_completion_async(params), TIMEOUT)
    (entry,) = listed.items
    return entry.text_edit.new_text


def expected(model: Path, adapter: Path | None, states: dict[str, torch.Tensor] | None) -> str:
    from dmem_lsp.runtime.engine import Engine, EngineOptions

    engine = Engine.load(EngineOptions(model=str(model), adapter=str(adapter) if adapter else None, device="cpu"))
    if states is not None:
        engine.memory.load_states(states)
    return expected_completion(engine, SOURCE, "", multiline=False)


@asyncio_module
async def test_each_folder_uses_the_adapter_its_config_names(box, talkative_adapter):
    team, hub = await folder_status(box.client, box.team), await folder_status(box.client, box.hub)
    assert team["adapter"] == str((box.team / "tools" / "adapter").resolve())
    assert team["config"] == str(box.team / ".dmem" / "config.toml")
    assert hub["adapter"] == "team/adapter@v1"
    assert fingerprint_on_disk(team)["adapter_sha256"] == adapter_sha256(talkative_adapter)
    assert fingerprint_on_disk(hub)["adapter_sha256"] == adapter_sha256(box.hub_adapter)
    assert adapter_sha256(talkative_adapter) != adapter_sha256(box.hub_adapter)

    # completions read each folder's states through that folder's adapter, swapped in per request
    for root, adapter in ((box.team, talkative_adapter), (box.hub, box.hub_adapter), (box.team, talkative_adapter)):
        states = load_file(str(Path((await folder_status(box.client, root))["directory"]) / "state.safetensors"))
        assert await completion(box.client, root / "app.py") == expected(box.model, adapter, states)
    with_other_adapter = expected(
        box.model, box.hub_adapter, load_file(str(Path(team["directory"]) / "state.safetensors"))
    )
    assert with_other_adapter != expected(
        box.model, talkative_adapter, load_file(str(Path(team["directory"]) / "state.safetensors"))
    )


@asyncio_module
async def test_store_and_policy_settings_are_honoured(box):
    events = [e for e in box.client.memory_events if e["folder"] == box.team.as_uri()]
    written = {e["source"]: e["written"] for e in events if e["event"] == "written"}
    assert set(written) == {"pyproject.toml", "docs/rules.txt"}  # a named convention file too
    assert all(tokens <= 16 for tokens in written.values())  # convention-file-tokens
    skipped = {e["source"]: e["reason"] for e in events if e["event"] == "skipped"}
    assert ".dmem/config.toml" in skipped["generated/README.md"]

    after = len(box.client.memory_events)
    app = (box.team / "app.py").as_uri()
    box.client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=app, language_id="python", version=1, text=SOURCE)))
    box.client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=app, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=SOURCE + "a * b\n")],
    ))
    refused = await wait_for_memory(box.client, lambda e: e["event"] == "skipped" and e["source"] == "app.py", after)
    assert refused["kind"] == "edit" and "turns off writes to edits" in refused["reason"]
    assert (await folder_status(box.client, box.team))["stores"]["edits"]["tokens"] == 0


@asyncio_module
async def test_an_adapter_for_another_backbone_is_refused_naming_both(box):
    refused = await wait_for_memory(box.client, lambda e: e["event"] == "refused")
    assert refused["folder"] == box.other.as_uri()
    assert "built for tiny/smollm3" in refused["reason"] and str(box.model) in refused["reason"]
    assert str(box.other / ".dmem" / "config.toml") in refused["reason"]
    folders = (await command(box.client, "dmem.memoryStatus"))["folders"]
    assert box.other.as_uri() not in {f["folder"] for f in folders}  # no memory, nothing written or saved
    # completions there still work, on zero state: the base model's text
    assert await completion(box.client, box.other / "app.py") == expected(box.model, None, None)


@asyncio_module
async def test_a_changed_config_reopens_the_folder(box):
    after = len(box.client.memory_events)
    write_config(box.team, '[adapter]\npath = "tools/adapter"\n')  # edits are written again
    await wait_for_memory(box.client, lambda e: e["event"] == "opened" and e["folder"] == box.team.as_uri(), after)
    after = len(box.client.memory_events)
    app = (box.team / "app.py").as_uri()
    box.client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=app, version=3),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=SOURCE + "a * b * 1\n")],
    ))
    written = await wait_for_memory(box.client, lambda e: e["event"] == "written" and e["source"] == "app.py", after)
    assert written["store"] == "edits"
