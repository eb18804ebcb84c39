"""A completion while memory is being written: it should wait behind one write chunk at most.

A tiny model on the inference worker (the server's own ``Worker``, ``assist.complete`` and
``assist.write_memory``). Completions are timed, alternately, with the worker idle and
while a long write (chunks of ``--chunk`` tokens, queued far ahead) keeps it busy. The
script prints p50/p95 of both, the same with one first-come queue (what priorities avoid),
the time of one write chunk, and the extra wait under load in chunks: the completion
arrives as a chunk starts, so it waits about one chunk, and not for the rest of the write.

    .venv/bin/python benchmarks/write_contention.py [--completions 40] [--chunk 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dmem_lsp.runtime import assist  # noqa: E402
from dmem_lsp.runtime.engine import Engine, EngineOptions  # noqa: E402
from dmem_lsp.runtime.settings import CompletionSettings  # noqa: E402
from dmem_lsp.runtime.worker import Priority, Worker  # noqa: E402
from tests.tiny_models import save_talkative_model  # noqa: E402

PREFIX, SUFFIX = "import os\n\ndef add(a, b):\n    return a", "\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=40)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine.load(EngineOptions(model=str(save_talkative_model(Path(tmp))), adapter=None, device="cpu"))
    settings = CompletionSettings(max_tokens=args.max_tokens, debounce_ms=0)
    generator = torch.Generator().manual_seed(0)
    chunk = torch.randint(3, engine.model.config.vocab_size, (args.chunk,), generator=generator).tolist()
    worker = Worker()

    def complete(priority: Priority = Priority.REQUEST) -> float:
        start = time.perf_counter()
        worker.submit(
            lambda stop: assist.complete(engine, PREFIX, SUFFIX, settings, stop), priority=priority
        ).future.result()
        return time.perf_counter() - start

    chunk_times: list[float] = []
    writing = threading.Event()

    def write(stop) -> None:
        writing.set()
        start = time.perf_counter()
        assist.write_memory(engine, "edits", chunk)
        chunk_times.append(time.perf_counter() - start)

    for _ in range(3):  # warm up
        complete()
        worker.submit(write, priority=Priority.WRITE).future.result()
    chunk_times.clear()

    def under_load(priority: Priority) -> float:
        """A completion that arrives while the first of four queued write chunks runs."""
        writing.clear()
        pending = [worker.submit(write, priority=Priority.WRITE) for _ in range(4)]
        writing.wait()
        took = complete(priority)
        for job in pending[1:]:
            job.cancel()
        worker.submit(lambda stop: None, priority=Priority.WRITE).future.result()  # drained
        return took

    idle, loaded, fifo = [], [], []
    for _ in range(args.completions):
        idle.append(complete())
        loaded.append(under_load(Priority.REQUEST))
        fifo.append(under_load(Priority.WRITE))  # what one queue in arrival order would give
    worker.close()

    ms = 1000
    one_chunk = percentile(chunk_times, 0.5) if chunk_times else float("nan")
    extra = [b - a for a, b in zip(idle, loaded, strict=True)]
    print(
        f"tiny model, {args.max_tokens} new tokens per completion, write chunks of {args.chunk} tokens, "
        f"{args.threads} thread(s)"
    )
    print(
        f"  completion, worker idle         p50 {percentile(idle, .5) * ms:7.2f} ms   "
        f"p95 {percentile(idle, .95) * ms:7.2f} ms"
    )
    print(
        f"  completion, during a long write p50 {percentile(loaded, .5) * ms:7.2f} ms   "
        f"p95 {percentile(loaded, .95) * ms:7.2f} ms"
    )
    print(
        f"  the same, one first-come queue  p50 {percentile(fifo, .5) * ms:7.2f} ms   "
        f"p95 {percentile(fifo, .95) * ms:7.2f} ms"
    )
    print(f"  one write chunk                 p50 {one_chunk * ms:7.2f} ms")
    print(
        f"  extra wait under load           p50 {percentile(extra, .5) / one_chunk:5.2f} chunks   "
        f"p95 {percentile(extra, .95) / one_chunk:5.2f} chunks   max {max(extra) / one_chunk:5.2f} chunks "
        "(≈ 1: the chunk it arrived behind, not the rest)"
    )
    print(f"  first-come queue / priorities   {percentile(fifo, .5) / percentile(loaded, .5):5.2f}x at p50")


if __name__ == "__main__":
    main()
