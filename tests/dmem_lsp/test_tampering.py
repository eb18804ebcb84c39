"""Altered memory files are refused, moved aside and named: state files (checksum, NaN/Inf)
and exported snapshots (checksum, also through ``dmem-lsp memory import``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dmem_lsp.workspace.files import StoreError
from dmem_lsp.workspace.snapshots import read_snapshot, write_snapshot
from dmem_lsp.workspace.store import WorkspaceStore
from tests.dmem_lsp.tampering import SNAPSHOT_VARIANTS, STATE_VARIANTS, sample_states

FINGERPRINT = {"backbone": {"id": "tiny", "model_type": "qwen3", "num_layers": 2}, "adapter_sha256": "a" * 64,
               "config": {"rank": 8, "stores": ["conventions", "debug", "edits"]}}


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "project").mkdir()
    return WorkspaceStore(tmp_path / "project")


@pytest.mark.parametrize("variant", list(STATE_VARIANTS))
def test_a_tampered_state_is_refused_moved_aside_and_named(files, variant):
    tamper, named = STATE_VARIANTS[variant]
    files.save_states(sample_states(), FINGERPRINT, {"conventions": 40, "debug": 3}, {"README.md": "b" * 64})
    assert files.open_states(FINGERPRINT)[0] is not None  # untouched, it loads
    tamper(files.state_path)
    saved, notes = files.open_states(FINGERPRINT)
    assert saved is None and named in notes[0], notes
    assert not files.state_path.exists() and list(files.dir.glob("state.safetensors.corrupt-*"))


def test_the_state_of_another_adapter_is_not_mixed_in(files):
    files.save_states(sample_states(), FINGERPRINT, {})
    saved, notes = files.open_states({**FINGERPRINT, "backbone": {**FINGERPRINT["backbone"], "model_type": "llama"}})
    assert saved is None and "another backbone" in notes[0]


def test_permissions_are_private(files):
    files.acquire()
    files.save_states(sample_states(), FINGERPRINT, {})
    files.write_manifest(files.read_manifest()[0])
    files.release()
    for directory in (files.dir, files.dir.parent, files.dir.parent.parent, files.requests_dir):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    for path in (files.state_path, files.manifest_path, files.lock_path):
        assert path.stat().st_mode & 0o777 == 0o600, path


@pytest.mark.parametrize("variant", list(SNAPSHOT_VARIANTS))
def test_a_tampered_snapshot_is_refused_and_named(tmp_path, variant):
    tamper, named = SNAPSHOT_VARIANTS[variant]
    snapshot = tmp_path / "debug.safetensors"
    write_snapshot(snapshot, "debug", sample_states()["debug"], FINGERPRINT, 12)
    assert read_snapshot(snapshot)[0] == "debug"
    tamper(snapshot)
    with pytest.raises(StoreError, match=named):
        read_snapshot(snapshot)


def test_memory_import_refuses_a_relabelled_snapshot(files, tmp_path):
    snapshot = tmp_path / "debug.safetensors"
    write_snapshot(snapshot, "debug", sample_states()["debug"], FINGERPRINT, 12)
    SNAPSHOT_VARIANTS["store relabelled debug to edits"][0](snapshot)
    env = {**os.environ, "XDG_DATA_HOME": os.environ["XDG_DATA_HOME"]}
    result = subprocess.run(
        [sys.executable, "-m", "dmem_lsp", "memory", "import", str(snapshot), "--workspace", str(files.root)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )
    assert result.returncode == 1 and "fails its checksum" in result.stderr and "not imported" in result.stderr
    assert not files.state_path.exists()


def test_nan_in_a_state_written_by_hand_is_refused_without_a_checksum_of_version_1(files):
    from safetensors.torch import save

    states = sample_states()
    states["edits"][0, 0, 0, 0] = float("inf")
    metadata = {"format_version": "1", "fingerprint": "{}", "tokens": "{}"}
    files.dir.mkdir(parents=True)
    files.state_path.write_bytes(save({k: v.contiguous() for k, v in states.items()}, metadata=metadata))
    saved, notes = files.open_states({})
    assert saved is None and "NaN or Inf values in edits" in notes[0]


@pytest.mark.parametrize("variant", sorted(set(STATE_VARIANTS) & set(SNAPSHOT_VARIANTS)))
def test_state_files_and_snapshots_are_refused_with_the_same_words(files, tmp_path, variant):
    """One reader (``state_file.read_checked``) checks both: the same damage is named alike."""
    files.save_states(sample_states(), FINGERPRINT, {"debug": 3})
    snapshot = tmp_path / "debug.safetensors"
    write_snapshot(snapshot, "debug", sample_states()["debug"], FINGERPRINT, 12)
    STATE_VARIANTS[variant][0](files.state_path)
    SNAPSHOT_VARIANTS[variant][0](snapshot)
    with pytest.raises(StoreError) as state_error:
        files.read_saved()
    with pytest.raises(StoreError) as snapshot_error:
        read_snapshot(snapshot)
    said = [str(e.value).replace(str(path), "PATH") for e, path in
            ((state_error, files.state_path), (snapshot_error, snapshot))]
    assert said[1].endswith("; not imported"), said
    assert said[0].split()[:4] == said[1].removesuffix("; not imported").split()[:4], said
