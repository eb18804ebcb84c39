"""How many planted secrets reach a write pass: the write policy over a generated corpus.

Every kind of secret in ``tests/dmem_lsp/secret_corpus.py`` (URL passwords, ``curl -u``, hex
and cloud API keys, keyword assignments, private keys, ...), in every shape (alone, in its
file, in free text, in a diff), goes through ``Policy.check_text`` as the server's writes do.
A secret counts as refused when it is not in what would be written: the text was refused, or
the secret was redacted. Also printed: innocent look-alikes written whole, and the scan's
speed over a file at the default size cap.

    .venv/bin/python benchmarks/secret_policy.py [--seed 0] [--values 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmem_lsp.runtime.settings import MemorySettings  # noqa: E402
from dmem_lsp.workspace.policy import Policy  # noqa: E402
from tests.dmem_lsp.secret_corpus import innocent, planted  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--values", type=int, default=3, help="random secrets per kind and shape")
    args = parser.parse_args()
    cap = MemorySettings().max_file_bytes
    policy = Policy(Path(tempfile.gettempdir()), cap)
    plants = planted(args.seed, args.values)
    outcome: Counter[str] = Counter()
    leaks = []
    for plant in plants:
        text, refusal = policy.check_text(plant.text, plant.name)
        if text is None:
            outcome["refused whole"] += 1
        elif any(secret in text for secret in plant.secrets):
            leaks.append(plant.id)
        else:
            outcome["redacted"] += 1
    refused = len(plants) - len(leaks)
    kinds = len({plant.kind for plant in plants})
    print(f"secrets refused: {refused} of {len(plants)} ({kinds} kinds; {outcome['redacted']} redacted, "
          f"{outcome['refused whole']} texts refused whole)")
    for leak in leaks:
        print(f"  reached a write pass: {leak}")
    looks = innocent()
    whole = sum(policy.check_text(text, name) == (text, None) for name, text in looks)
    print(f"look-alikes written whole: {whole} of {len(looks)}")
    source = "".join(
        p.read_text(encoding="utf-8") for p in sorted(Path(__file__).resolve().parents[1].glob("dmem_lsp/*.py"))
    )
    sample = (source * (cap // len(source) + 1))[: cap - 1024]
    start = time.perf_counter()
    policy.check_text(sample, "sample.py")
    seconds = time.perf_counter() - start
    print(f"scan: {len(sample) / 1024:.0f} KiB of Python in {seconds:.2f} s ({len(sample) / 1024 / seconds:.0f} KiB/s)")
    return 1 if leaks or whole != len(looks) else 0


if __name__ == "__main__":
    sys.exit(main())
