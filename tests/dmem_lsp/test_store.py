"""Memory files: bit-exact round trips, atomic saves, refusals moved aside, the lock, CLI resets."""

from __future__ import annotations

import os

import pytest
import torch

from dmem_lsp.cli import memory as memory_cli
from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.store import WorkspaceStore

FINGERPRINT = {"backbone": {"id": "tiny", "num_layers": 2}, "adapter_sha256": "a" * 64, "config": {"rank": 8}}


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    root = tmp_path / "project"
    root.mkdir()
    return WorkspaceStore(root)


def states(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, 1, 8, 8, generator=g) for name in ("conventions", "debug", "edits")}


def test_round_trip_is_bit_identical(files):
    saved = states()
    files.save_states(saved, FINGERPRINT, {"edits": 3})
    loaded, problem = files.load_states(FINGERPRINT)
    assert problem is None and all(torch.equal(loaded[n], saved[n]) for n in saved)
    assert str(files.dir).startswith(os.environ["XDG_DATA_HOME"])


def test_a_crash_mid_save_leaves_the_previous_state(files, monkeypatch):
    first = states(0)
    files.save_states(first, FINGERPRINT, {})

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        files.save_states(states(1), FINGERPRINT, {})
    monkeypatch.undo()
    loaded, problem = files.load_states(FINGERPRINT)
    assert problem is None and all(torch.equal(loaded[n], first[n]) for n in first)
    assert [p.name for p in files.dir.iterdir() if p.name.endswith(".tmp")] == []


def test_another_adapter_or_a_corrupt_file_is_moved_aside(files):
    saved = states()
    files.save_states(saved, FINGERPRINT, {"edits": 4}, {"README.md": "c" * 64})
    other = {**FINGERPRINT, "adapter_sha256": "b" * 64}
    loaded, problem = files.load_states(other)
    assert loaded is None and "another adapter_sha256" in problem
    assert not files.state_path.exists() and list(files.kept_dir.glob("*/state.safetensors"))
    files.save_states(states(1), other, {"debug": 1})
    restored, notes = files.open_states(FINGERPRINT)  # back to the first adapter: its state returns
    assert all(torch.equal(restored.states[n], saved[n]) for n in saved)
    assert restored.tokens == {"edits": 4} and restored.sources == {"README.md": "c" * 64}
    assert "kept in adapters" in notes[0] and "restored" in notes[1]
    again, _ = files.open_states(other)  # and the second one's is kept, not moved aside
    assert again.tokens == {"debug": 1}
    files.state_path.write_bytes(b"garbage")
    loaded, problem = files.load_states(other)
    assert loaded is None and "cannot be read" in problem and list(files.dir.glob("state.safetensors.corrupt-*"))
    assert files.load_states(other) == (None, None)


def test_a_corrupt_manifest_is_moved_aside(files):
    files.dir.mkdir(parents=True)
    files.manifest_path.write_text("{nope")
    manifest, problem = files.read_manifest()
    assert manifest["tokens"] == {} and list(files.dir.glob("manifest.json.corrupt-*"))
    assert "not a valid manifest" in problem


def test_the_lock_is_exclusive_and_says_who_holds_it(files):
    assert files.acquire()
    other = WorkspaceStore(files.root)
    assert not other.acquire() and other.holder() == f"pid {os.getpid()}"
    files.release()
    assert other.acquire()
    other.release()


def test_reset_without_a_server_zeroes_one_store(files, capsys):
    saved = states()
    files.save_states(saved, FINGERPRINT, {"edits": 5, "debug": 2})
    assert memory_cli.reset_memory(files.root, "edits") == 0
    loaded, _ = files.load_states(FINGERPRINT)
    assert not torch.count_nonzero(loaded["edits"])
    assert torch.equal(loaded["debug"], saved["debug"]) and torch.equal(loaded["conventions"], saved["conventions"])
    assert files.read_manifest()[0]["tokens"]["edits"] == 0 and files.read_saved().tokens["edits"] == 0
    assert memory_cli.memory_status(files.root) == 0
    out = capsys.readouterr().out
    assert "not running" in out and state_sha256(loaded["edits"])[:16] in out


def test_commands_on_a_folder_without_memory_say_so(files, capsys):
    assert memory_cli.reset_memory(files.root, None) == 1
    assert "has no memory yet" in capsys.readouterr().err


def test_temp_files_of_interrupted_saves_are_removed_when_the_lock_is_taken(files):
    files.save_states(states(), FINGERPRINT, {})
    left = [
        files.dir / ".manifest.json.k1l2.tmp",
        files.dir / ".state.safetensors.x9y8.tmp",
        files.requests_dir / ".a.json.q.tmp",
    ]
    files.requests_dir.mkdir(parents=True, exist_ok=True)
    for path in left:
        path.write_bytes(b"half a save")
    assert files.acquire()
    assert sorted(files.clean_temporary_files()) == sorted(p.name for p in left)
    files.release()
    assert not [p for p in files.dir.rglob("*.tmp")] and files.read_saved().states.keys() == states().keys()


def test_the_log_file_is_private(files, tmp_path):
    import subprocess
    import sys

    log = tmp_path / "dmem.log"
    subprocess.run(
        [sys.executable, "-m", "dmem_lsp", "--log-file", str(log), "memory", "status", "--workspace", str(files.root)],
        capture_output=True, timeout=120, env={**os.environ}, check=False,
    )
    assert log.exists() and log.stat().st_mode & 0o777 == 0o600
