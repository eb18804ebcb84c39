"""One framing for serving and training: what the real server writes is what an episode writes.

A git repository with a README (a convention file) and a source file is opened by the real
server (a subprocess, an SSW adapter, write passes of 16 tokens) and edited in the editor;
the same repository's history becomes training episodes (``workspace_episodes``). The
episode's history pieces are the server's write passes (``texts.write_passes``), and writing
them as the trainer writes them (``episode_tensors``: one segment per pass, each into its
piece's store) gives the very state the server saved, for the convention file and for the
edit: an episode's README passes and edit passes build the server's conventions and edits
states.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import pytest_asyncio
import torch
import transformers
from lsprotocol import types

import memory
from dmem_lsp.cli.episodes import WorkspaceOptions, workspace_episodes
from dmem_lsp.workspace import texts
from memory.episodes import Episode
from memory.training import EpisodeLoss, episode_tensors
from tests.dmem_lsp.lsp import server_env, start, stop, wait_for_status
from tests.dmem_lsp.test_memory_server import disk_states, settled, written
from tests.memory.helpers import strengthen
from tests.tiny_models import load_tiny_model

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHUNK = 16
README = "# Shop\nTests live in qa/. Functions use snake_case; indent with four spaces.\n"
OLD = "def add(a, b):\n    return a + b\n"
NEW = OLD + "\n\ndef sub(a, b):\n    return a - b\n"
OPTIONS = {"memory": {"editDebounceMs": 0, "saveDebounceMs": 0, "writeChunkTokens": CHUNK}}


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def ssw_adapter(talkative_model, tmp_path_factory) -> Path:
    mem = memory.attach(load_tiny_model(talkative_model), memory.DeltaMemConfig(write="segment"))
    strengthen(mem)
    return memory.save_adapter(mem, tmp_path_factory.mktemp("ssw") / "adapter", base_model_id="tiny/talkative")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """Commit 1: README.md and src/app.py (OLD); commit 2: src/app.py becomes NEW."""
    repo = tmp_path_factory.mktemp("shop")
    (repo / "src").mkdir()
    (repo / "README.md").write_text(README)
    (repo / "src" / "app.py").write_text(OLD)
    git(repo, "init", "-q")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (repo / "src" / "app.py").write_text(NEW)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    (repo / "src" / "app.py").write_text(OLD)  # the editor starts from OLD and types NEW
    return repo


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(talkative_model, ssw_adapter, repo, tmp_path_factory):
    """The server on ``repo`` once it wrote README.md and saved; then an edit OLD -> NEW in the editor."""
    args = ["--model", str(talkative_model), "--adapter", str(ssw_adapter), "--device", "cpu"]
    client, _ = await start(args, server_env(tmp_path_factory.mktemp("data")), OPTIONS, [repo])
    try:
        status = await wait_for_status(client, "ready", "error")
        assert status["state"] == "ready", status["message"]
        await written(client, "conventions", 0)
        conventions = disk_states(await settled(client))["conventions"]
        after = len(client.memory_events)
        uri = (repo / "src" / "app.py").as_uri()
        client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=OLD)))
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=NEW)],
        ))
        edit = await written(client, "edits", after)
        folder = await settled(client)
        yield {"client": client, "conventions": conventions, "edits": disk_states(folder)["edits"], "edit": edit}
    finally:
        await stop(client)


def trainer_state(model_dir: Path, adapter: Path, writes: list[tuple[str, list]], store: str) -> torch.Tensor:
    """Write each (store, pieces) as the trainer writes an episode's history (``episode_tensors``'s
    passes), in order; ``store``'s state afterwards."""
    mem = memory.load_adapter(load_tiny_model(model_dir), adapter)
    for name, pieces in writes:
        episode = Episode(history=tuple(pieces), query=(1,), target=(1,))
        passes, _, _ = episode_tensors(episode, 10**6, segmented=True, device="cpu", chunk_tokens=CHUNK)
        assert [tuple(ids[0].tolist()) for ids, _, _ in passes] == list(pieces), "the trainer would cut them again"
        assert all(set(segments[0].tolist()) == {0} for _, segments, _ in passes), "one segment per pass, as served"
        with torch.no_grad():
            for ids, segments, _ in passes:
                with mem.writing(name, segments=segments):
                    mem.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return mem.states()[store]


async def test_a_convention_file_is_written_by_the_server_as_in_training(served, repo, talkative_model, ssw_adapter):
    tokenizer = transformers.AutoTokenizer.from_pretrained(talkative_model)
    expected = texts.write_passes(tokenizer, texts.convention("README.md", README), CHUNK)
    assert len(expected) > 1, "the README must take several passes for segments to be tested"
    (episode,) = workspace_episodes(repo, tokenizer, WorkspaceOptions(write_chunk_tokens=CHUNK))
    assert list(episode.history[: len(expected)]) == expected, "the episode's history starts with README's passes"
    events = [e for e in served["client"].memory_events if e["event"] == "written" and e["store"] == "conventions"]
    assert [(e["source"], e["written"]) for e in events] == [("README.md", sum(map(len, expected)))]
    ours = trainer_state(talkative_model, ssw_adapter, [("conventions", expected)], "conventions")
    assert torch.count_nonzero(ours)
    torch.testing.assert_close(served["conventions"], ours, rtol=1e-4, atol=1e-6)


async def test_an_edit_is_written_by_the_server_as_the_commit_is_in_training(
    served, repo, talkative_model, ssw_adapter
):
    tokenizer = transformers.AutoTokenizer.from_pretrained(talkative_model)
    expected = texts.write_passes(tokenizer, texts.edit("src/app.py", texts.diff("src/app.py", OLD, NEW)), CHUNK)
    assert served["edit"]["written"] == sum(map(len, expected))
    # a write reads every store (the conventions are written already): so does this one
    conventions = texts.write_passes(tokenizer, texts.convention("README.md", README), CHUNK)
    ours = trainer_state(talkative_model, ssw_adapter, [("conventions", conventions), ("edits", expected)], "edits")
    torch.testing.assert_close(served["edits"], ours, rtol=1e-4, atol=1e-6)
    # the commit making the same change enters the next episode's history as exactly these passes, in
    # edits after README's in conventions: the trainer writing that episode builds the server's states
    (repo / "src" / "app.py").write_text(NEW + "\n\ndef mul(a, b):\n    return a * b\n")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "three")
    try:
        options = WorkspaceOptions(write_chunk_tokens=CHUNK, history_commits=1)
        last = workspace_episodes(repo, tokenizer, options)[-1]
    finally:
        git(repo, "reset", "-q", "--hard", "HEAD~1")
        (repo / "src" / "app.py").write_text(OLD)
    assert list(last.history) == [*conventions, *expected], "README's passes, then commit two's edit passes"
    assert last.stores == ("conventions",) * len(conventions) + ("edits",) * len(expected)
    mem = memory.load_adapter(load_tiny_model(talkative_model), ssw_adapter)
    with torch.no_grad():
        EpisodeLoss(mem)(*episode_tensors(last, 10**6, segmented=True, device="cpu", chunk_tokens=CHUNK))
    states = mem.states()
    torch.testing.assert_close(states["conventions"], served["conventions"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(states["edits"], served["edits"], rtol=1e-4, atol=1e-6)
