"""SIGKILL at random moments while the real server writes memory (conventions in chunks,
edits, debug steps, saves): every restart loads a valid state holding every source its
manifest records, and no temp file is left. ``benchmarks/durability.py --kills 100`` runs
the same rounds a hundred times.
"""

from __future__ import annotations

import random

from dmem_lsp.workspace.store import WorkspaceStore
from tests.dmem_lsp.kills import WAIT, Kills, initialize, memory_event
from tests.dmem_lsp.lsp import RawServer, server_env

KILLS = 3
"""Rounds in the test suite: each is a server start (10 s on an idle 2-core machine, 40 s
on a busy one); benchmarks/durability.py runs 100."""


def test_random_kills_never_leave_a_state_that_lies(talkative_model, talkative_adapter, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))  # the servers' memory, read here too
    kills = Kills(
        workspace=tmp_path / "project",
        args=["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"],
        env=server_env(tmp_path / "data"),
        rng=random.Random(15),
    )
    kills.setup()
    for _ in range(KILLS):
        kills.one_round()
    kills.finish()
    print(f"kills survived: {kills.survived} of {KILLS} ({kills.while_learning} while conventions were being written)")
    assert kills.problems == []
    assert kills.written, "no convention write completed in any round"


def test_a_save_between_the_chunks_of_a_convention_file_does_not_record_it(
    talkative_model, talkative_adapter, tmp_path, monkeypatch
):
    """The issue's case: a debounced save lands while a convention file is half written, then
    the server is killed. The file must not count as learned, and the next start learns it."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "README.md").write_text(
        "# Project\n" + "".join(f"Rule {i}: name tests after behaviour.\n" for i in range(120))
    )
    args = ["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"]
    options = {"memory": {"writeChunkTokens": 16, "saveDebounceMs": 0, "conventionFileTokens": 2048}}
    server = RawServer(args, server_env(tmp_path / "data"))
    try:
        initialize(server, workspace, options)
        server.wait_for(lambda m: memory_event(m, "opened"))
        server.request(
            2,
            "workspace/executeCommand",
            {"command": "dmem.rememberDebugStep", "arguments": ["flaky: the clock is mocked"]},
        )
        server.wait_for(lambda m: m.get("id") == 2 and "method" not in m)
        server.wait_for(lambda m: memory_event(m, "saved"))  # the debug step's save, README.md half written
        half_way = not [
            m for m in server.received if memory_event(m, "written") and m["params"]["source"] == "README.md"
        ]
    finally:
        server.process.kill()
        server.process.wait(timeout=WAIT)
    assert half_way, "README.md was written before the save: make it longer"
    saved = WorkspaceStore(workspace).read_saved()
    assert saved.tokens["debug"] > 0 and "README.md" not in saved.sources

    server = RawServer(args, server_env(tmp_path / "data"))
    try:
        initialize(server, workspace, options)
        written, _ = server.wait_for(lambda m: memory_event(m, "written"))
        assert written["params"]["source"] == "README.md"  # learned again, not lost for good
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "README.md" in WorkspaceStore(workspace).read_saved().sources
