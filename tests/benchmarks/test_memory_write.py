"""benchmarks/memory_write.py: a ``--quick`` run in a subprocess prints every row.

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
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in (
        "plain forward (zero state)", "write pass ", "read, non-zero state", "write pass / plain forward",
        "read non-zero / zero state", "state file", "after   1,000 tokens written", "after   4,000 tokens written",
        "growth from 1k to 4,000 tokens",
    ):
        assert row in out, f"{row!r} missing from:\n{out}"
    assert re.search(r"write pass / plain forward +\d+\.\d+x", out)
    assert re.search(r"state file [\d,]+ bytes; save p50 [\d.]+ ms, load p50 [\d.]+ ms", out)
