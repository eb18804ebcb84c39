"""SIGKILL at random moments while the real server writes memory (conventions in chunks,
edits, debug steps, saves): every restart loads a valid state holding every source its
manifest records, and no temp file is left. ``benchmarks/durability.py --kills 100`` runs
the same rounds a hundred times.
"""

from __future__ import annotations

import random

from tests.dmem_lsp.kills import Kills
from tests.dmem_lsp.lsp import server_env

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
