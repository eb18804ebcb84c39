"""Durability and integrity of workspace memory, counted: kills survived, tampered files refused.

Kills: the real server (a tiny model, ``--adapter none``) is SIGKILLed at random moments
while it writes conventions in chunks, edits and debug steps, and saves; every restart must
find a state that passes its checksum, records only sources it fully holds, matches its
manifest, and no temp file left (``tests/dmem_lsp/kills.py`` says exactly what is checked).
Tampering: every altered state file and snapshot of ``tests/dmem_lsp/tampering.py`` must be
refused with a message naming what failed.

    .venv/bin/python benchmarks/durability.py [--kills 100] [--seed 15]

Prints ``kills survived: N of N`` and ``tampered files refused: N of N``; exits 1 otherwise.
A round is one server start (about 10 s on an idle 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.dmem_lsp.kills import Kills  # noqa: E402
from tests.dmem_lsp.lsp import server_env  # noqa: E402


def tampering(directory: Path) -> tuple[int, int, list[str]]:
    """(refused, tried, what was accepted)."""
    from dmem_lsp.workspace.files import StoreError
    from dmem_lsp.workspace.snapshots import read_snapshot, write_snapshot
    from dmem_lsp.workspace.store import WorkspaceStore
    from tests.dmem_lsp.tampering import SNAPSHOT_VARIANTS, STATE_VARIANTS, sample_states

    fingerprint = {"backbone": {"id": "tiny", "model_type": "qwen3"}, "adapter_sha256": "a" * 64, "config": {"rank": 8}}
    refused, accepted = 0, []
    for i, (variant, (tamper, named)) in enumerate(STATE_VARIANTS.items()):
        root = directory / f"state-{i}"
        root.mkdir()
        files = WorkspaceStore(root)
        files.save_states(sample_states(i), fingerprint, {"debug": 3}, {"README.md": "b" * 64})
        tamper(files.state_path)
        saved, notes = files.open_states(fingerprint)
        if saved is None and notes and named in notes[0]:
            refused += 1
        else:
            accepted.append(f"state: {variant}")
    for i, (variant, (tamper, named)) in enumerate(SNAPSHOT_VARIANTS.items()):
        snapshot = directory / f"snapshot-{i}.safetensors"
        write_snapshot(snapshot, "debug", sample_states(i)["debug"], fingerprint, 12)
        tamper(snapshot)
        try:
            read_snapshot(snapshot)
            accepted.append(f"snapshot: {variant}")
        except StoreError as error:
            refused += named in str(error)
            if named not in str(error):
                accepted.append(f"snapshot: {variant} (refused, but: {error})")
    return refused, len(STATE_VARIANTS) + len(SNAPSHOT_VARIANTS), accepted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["XDG_DATA_HOME"] = str(tmp / "data")  # this process reads what the servers write
        from tests.tiny_models import save_talkative_model

        model = save_talkative_model(tmp / "model")
        kills = Kills(tmp / "project", ["--model", str(model), "--adapter", "none", "--device", "cpu"],
                      server_env(tmp / "data"), random.Random(args.seed))
        kills.setup()
        began = time.monotonic()
        for i in range(args.kills):
            kills.one_round()
            print(f"  round {i + 1}: {kills.survived} of {kills.rounds} survived", file=sys.stderr, flush=True)
        kills.finish()
        refused, tried, accepted = tampering(tmp)
    for problem in kills.problems:
        print(f"  {problem}")
    for variant in accepted:
        print(f"  accepted: {variant}")
    print(f"kills survived: {kills.survived} of {kills.rounds} ({kills.while_learning} while conventions were "
          f"being written; {time.monotonic() - began:.0f} s)")
    print(f"tampered files refused: {refused} of {tried}")
    return 0 if not kills.problems and refused == tried else 1


if __name__ == "__main__":
    sys.exit(main())
