"""benchmarks/memory_write.py: a ``--quick`` run in a subprocess prints every row, the per-layer
rows of every default seed among them.

Nothing is timed: the quick run uses a tiny model, whose ratios say nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_write.py"


def test_quick_run_prints_every_row():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in (
        "plain forward (zero state)", "write pass ", "read, non-zero state", "write pass / plain forward",
        "read non-zero / zero state", "state file", "after   1,000 tokens written", "after   4,000 tokens written",
        "growth from 1k to 4,000 tokens", "per layer (8 layers x 3 repetitions per seed",
    ):
        assert row in out, f"{row!r} missing from:\n{out}"
    for seed in (0, 1, 2):  # the default seeds, each with the three per-layer ratios
        block = out.split(f"    seed {seed} (plain layer ")[1]
        for label in ("write path / plain layer", "read non-zero / plain layer", "read non-zero / zero-state read"):
            for how in ("layer  ", "in situ"):  # the whole layer's time, and δ-mem's own time in it
                row = rf"{how} {label} +\d+\.\d+x  \(quartiles \d+\.\d+-\d+\.\d+"
                assert re.search(row, block), f"{how} {label!r}, seed {seed}"
    for label, target in (
        ("write path / plain layer", "target ≤ 1.05x"),
        ("read non-zero / plain layer", "target ≤ 1.02x"),
    ):
        for how in ("whole layer", "in situ, the firm figure"):
            headline = out.split(f"worst seed, {how}")[1]
            assert re.search(rf"{label} +\d+\.\d+x \(seed [012]; {target}: (met|NOT met)\)", headline), label
    assert re.search(r"write pass / plain forward +\d+\.\d+x", out)
    assert re.search(r"state file [\d,]+ bytes; save p50 [\d.]+ ms, load p50 [\d.]+ ms", out)
