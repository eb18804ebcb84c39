"""benchmarks/lsp_latency.py: its documents keep the same end at every size, and a
``--quick`` run (real servers over stdio) prints every row.

Nothing is timed: the quick run makes a few requests on small documents.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lsp_latency.py"


def test_documents_of_every_size_end_alike():
    spec = importlib.util.spec_from_file_location("lsp_latency_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small, large = module.document(10 * 1024, 3), module.document(2**20, 3)
    assert (len(small), len(large)) == (10 * 1024, 2**20)
    assert large.endswith(small[-8192:]) and small.endswith(module.END)
    assert module.document(2**20, 4)[-8192:] != large[-8192:]
    position = module.end_of(small)
    assert small.splitlines()[position["line"]] == module.END.splitlines()[-1][: position["character"]]


def test_quick_run_prints_every_row():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=1200, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in ("LSP round trip", "engine directly", "server overhead", "largest p50 / 10 KB p50", "default / auto:"):
        assert row in out, f"{row!r} missing from:\n{out}"
    assert re.search(r"^ +10 KB +[\d.]+ +[\d.]+ +1\.00x", out, re.M)
    assert re.search(r"^ +200 KB +[\d.]+ +[\d.]+ +[\d.]+x .* \d+$", out, re.M)
    assert re.search(r"torch's default, \d+ thread\(s\) +p50 +[\d.]+ ms", out)
    assert re.search(r"threads auto \(auto: .*\), \d+ thread\(s\) +p50 +[\d.]+ ms", out)
