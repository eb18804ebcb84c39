"""The memory commands from a terminal, without a server: status, reset, export, import.

They run as real subprocesses; each asserts at the end that torch was never imported (the
commands read and write states through safetensors' numpy API), and runs from a
subdirectory of the repository to check they find the folder an editor opens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.store import WorkspaceStore

SHAPE = (2, 1, 8, 8)
FINGERPRINT = {
    "backbone": {"id": "tiny/test"},
    "adapter_sha256": "a" * 64,
    "config": {"stores": ["conventions", "debug", "edits"]},
}
RUN = (
    "import sys; from dmem_lsp.cli.main import main; code = main(sys.argv[1:]); "
    "print('torch imported:', 'torch' in sys.modules, file=sys.stderr); sys.exit(code)"
)


def run(data: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(data)}
    return subprocess.run(
        [sys.executable, "-c", RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def no_torch(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert "torch imported: False" in result.stderr, result.stderr
    return result


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A repository (``.git``) with memory in every store, and the data home it is kept in."""
    data = tmp_path / "data"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))  # WorkspaceStore here looks where the commands look
    root = tmp_path / "proj"
    (root / ".git").mkdir(parents=True)
    (root / "src" / "pkg").mkdir(parents=True)
    files = WorkspaceStore(root)
    assert files.acquire()
    rng = np.random.default_rng(0)
    states = {store: rng.standard_normal(SHAPE).astype(np.float32) for store in FINGERPRINT["config"]["stores"]}
    files.save_states(states, FINGERPRINT, {"conventions": 10, "debug": 20, "edits": 30})
    manifest, _ = files.read_manifest()
    manifest.update(FINGERPRINT, tokens={"conventions": 10, "debug": 20, "edits": 30})
    files.write_manifest(manifest)
    files.release()
    return root, data, states


def test_status_from_a_subdirectory_is_the_repository_s_and_needs_no_torch(project):
    root, data, states = project
    result = no_torch(run(data, root / "src" / "pkg", "memory", "status"))
    assert result.returncode == 0, result.stderr
    assert f"## {root}\n" in result.stdout and "has no memory" not in result.stderr
    assert "Server: not running." in result.stdout and "Backbone: `tiny/test`, adapter sha256 `aaaa" in result.stdout
    for store, tokens in (("conventions", 10), ("debug", 20), ("edits", 30)):
        assert f"| {store} | {tokens} | `{state_sha256(states[store])[:16]}` |" in result.stdout


def test_reset_from_a_subdirectory_zeroes_the_repository_s_store_without_torch(project):
    root, data, states = project
    result = no_torch(run(data, root / "src", "--reset-memory", "--store", "debug"))
    assert result.returncode == 0, result.stderr
    assert f"{root}: reset debug" in result.stdout
    on_disk = load_file(str(WorkspaceStore(root).state_path))
    assert not on_disk["debug"].any()
    assert np.array_equal(on_disk["edits"], states["edits"]) and np.array_equal(
        on_disk["conventions"], states["conventions"]
    )
    manifest = json.loads(WorkspaceStore(root).manifest_path.read_text())
    assert manifest["tokens"]["debug"] == 0 and manifest["tokens"]["edits"] == 30


def test_an_explicit_workspace_is_taken_as_given(project):
    root, data, _ = project
    result = no_torch(run(data, root, "memory", "status", "--workspace", str(root / "src")))
    assert result.returncode == 1 and "has no memory yet" in result.stderr


def test_export_and_import_need_no_torch_and_keep_the_state(project, tmp_path):
    root, data, states = project
    snapshot = tmp_path / "edits.safetensors"
    exported = no_torch(run(data, root / "src", "memory", "export", "--store", "edits", "-o", str(snapshot)))
    assert exported.returncode == 0, exported.stderr
    other = tmp_path / "other"
    (other / ".hg").mkdir(parents=True)
    (other / "lib").mkdir()
    imported = no_torch(run(data, other / "lib", "memory", "import", str(snapshot)))
    assert imported.returncode == 0, imported.stderr
    assert f"into {other}" in imported.stdout
    on_disk = load_file(str(WorkspaceStore(other).state_path))
    assert np.array_equal(on_disk["edits"], states["edits"]) and not on_disk["debug"].any()
