"""What δ-mem costs on a Qwen3-shaped model: write and read passes, the state file, memory.

A random-weight Qwen3 (hidden 1024, 8 layers, Qwen3's vocabulary; no weights to download)
with a fresh δ-mem adapter (TSW, rank 8; its weights drawn large enough that writes and
reads are not negligible). The same ``--tokens`` random tokens go through the model in the
server's write chunks (``--chunk``, memory.writeChunkTokens' default), three ways side by
side, chunk by chunk and in a rotating order:

- a plain forward with every store zero (δ-mem's read path is skipped: the backbone as is),
- a write pass into the ``edits`` store (``Memory.writing``),
- a read-only forward with the non-zero state the writes left.

Each pass computes the last token's logits only, as the server's write does. Passes are
timed in CPU seconds of this process (wall time on a shared machine measures the other
processes). The script prints every pass's time per repeat and the ratios write / plain (target
≤ 1.05×) and non-zero read / zero read (target ≤ 1.02×): the headline is the median of the
per-chunk ratios (each chunk's three passes ran back to back, so a burst of load from other
processes falls on all three), beside the ratio of the totals. Then the time to save and
load the state file through the server's own store (safetensors, fsync, rename), its size,
and the process's memory (RSS and its peak) after writing 1k and ``--growth`` tokens into a
fresh state on the same model (target: no growth; ``--growth 0`` skips it, ``--growth-hidden``
runs it on a narrower model of the same depth, where the machine is too slow for the full width).

The whole-model ratios are only good to a few percent on a shared machine (one chunk's ratio
spreads ±5–10%). The firm figures are the per-layer rows (``benchmarks/memory_layers.py``):
each decoder layer called on its own, plain / write / read non-zero / read of a zero state
side by side, ``--layer-repeats`` times, for every seed of ``--seeds``, as whole-layer times
and as δ-mem's own time inside the layer ("in situ", the firm figure); the worst seed is the
headline. The whole-model and memory rows use the first seed; ``--tokens 0`` skips the
whole-model passes.

    .venv/bin/python benchmarks/memory_write.py [--tokens 8192] [--chunk 256] [--repeats 1] [--threads 1]
                                                [--seeds 0,1,2] [--layer-repeats 10]
    .venv/bin/python benchmarks/memory_write.py --quick
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import memory_layers  # noqa: E402  (benchmarks/, beside this file)
import psutil  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import memory  # noqa: E402

QWEN3_SHAPE = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000.0,
    tie_word_embeddings=True, rms_norm_eps=1e-6,
)
QUICK_SHAPE = dict(QWEN3_SHAPE, vocab_size=2048, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)


def build(shape: dict, seed: int) -> tuple[torch.nn.Module, memory.Memory]:
    """A random Qwen3 of ``shape`` with a fresh δ-mem whose weights are not negligible."""
    config = transformers.Qwen3Config(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    mem = memory.attach(model, memory.DeltaMemConfig())
    with torch.no_grad():
        for name, param in mem.named_parameters():
            if "beta" not in name:
                param.normal_(0, 0.02)
    return model, mem


def forward(model, ids: torch.Tensor) -> float:
    """CPU seconds of one forward: on one thread (``--threads 1``) that is the pass's work,
    and other processes on the cores do not count, as they would in wall time."""
    start = time.process_time()
    model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.process_time() - start


def passes(model, mem: memory.Memory, tokens: torch.Tensor, chunk: int) -> list[dict[str, float]]:
    """Seconds of each kind of pass on every chunk of ``tokens``, the order rotating."""
    chunks = []
    written = mem.states()
    for i, start in enumerate(range(0, tokens.shape[1], chunk)):
        ids = tokens[:, start : start + chunk]
        times = {}
        for kind in ("plain", "write", "read")[i % 3 :] + ("plain", "write", "read")[: i % 3]:
            if kind == "plain":
                mem.reset()
                times[kind] = forward(model, ids)
            elif kind == "write":
                mem.load_states(written)
                with mem.writing(store="edits"):
                    times[kind] = forward(model, ids)
                written = mem.states()
            else:
                mem.load_states(written)
                times[kind] = forward(model, ids)
        chunks.append(times)
    mem.load_states(written)
    return chunks


def rss_mib() -> tuple[float, float]:
    """(the process's RSS now, its peak so far), MiB."""
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return psutil.Process().memory_info().rss / 2**20, peak


def state_file(mem: memory.Memory, repeats: int) -> tuple[list[float], list[float], int]:
    """(save seconds, load seconds, bytes) of the state through the server's WorkspaceStore."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_DATA_HOME"] = tmp  # WorkspaceStore keeps its files under it
        from dmem_lsp.workspace.store import WorkspaceStore

        store = WorkspaceStore(Path(tmp) / "workspace")
        store.dir.mkdir(parents=True)
        fingerprint = {"backbone": {"id": "random-qwen3"}, "adapter_sha256": "0" * 64, "config": mem.config.to_dict()}
        saves, loads = [], []
        for _ in range(repeats):
            states = mem.states()
            start = time.perf_counter()
            store.save_states(states, fingerprint, {name: 1 for name in states})
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            loaded, _ = store.read_states()
            mem.load_states(loaded)
            loads.append(time.perf_counter() - start)
        return saves, loads, store.state_path.stat().st_size


def growth(
    model, mem: memory.Memory, vocab: int, seed: int, chunk: int, checkpoints: list[int]
) -> list[tuple[int, float, float]]:
    """(tokens written into a fresh state, RSS MiB, peak RSS MiB) after writing up to each checkpoint."""
    mem.reset()
    generator = torch.Generator().manual_seed(seed + 1)
    written, rows = 0, []
    every = max(chunk, checkpoints[-1] // 10)  # a progress line on stderr, with the memory so far
    with torch.inference_mode():
        for target in checkpoints:
            while written < target:
                size = min(chunk, target - written)
                ids = torch.randint(3, vocab, (1, size), generator=generator)
                with mem.writing(store="edits"):
                    model(input_ids=ids, use_cache=False, logits_to_keep=1)
                written += size
                if written // every > (written - size) // every and written != target:
                    rss, peak = rss_mib()
                    print(f"growth: {written:,} tokens written, RSS {rss:.1f} MiB, peak {peak:.1f} MiB",
                          file=sys.stderr, flush=True)
            rows.append((written, *rss_mib()))
            print(f"growth: {written:,} tokens written, RSS {rows[-1][1]:.1f} MiB, peak {rows[-1][2]:.1f} MiB",
                  file=sys.stderr, flush=True)
    return rows


def whole_model(runs: list[list[dict[str, float]]], args: argparse.Namespace) -> None:
    """The whole-model rows: every pass's CPU seconds per repeat, and the ratios over chunks (good to a
    few percent on a shared machine: the per-layer rows are the firm figures)."""
    print(
        f"  whole model, seed {args.seed}: {args.tokens} tokens, {args.repeats} repeat(s); "
        "the same targets as above, to a few percent here"
    )
    print(f"  {'pass':<30}" + "".join(f"{f'repeat {i + 1} CPU s':>15}" for i in range(args.repeats)) + f"{'median':>9}")
    names = {"plain": "plain forward (zero state)", "write": "write pass", "read": "read, non-zero state"}
    totals = [{kind: sum(c[kind] for c in run) for kind in names} for run in runs]
    for kind, name in names.items():
        values = [total[kind] for total in totals]
        print(f"  {name:<30}" + "".join(f"{v:>15.3f}" for v in values) + f"{statistics.median(values):>9.3f}")
    triples = [c for run in runs for c in run]
    for label, top, bottom, target in (
        ("write pass / plain forward", "write", "plain", 1.05),
        ("read non-zero / zero state", "read", "plain", 1.02),
    ):
        ratios = sorted(c[top] / c[bottom] for c in triples)
        median = statistics.median(ratios)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [median] * 3
        whole = sum(t[top] for t in totals) / sum(t[bottom] for t in totals)
        print(
            f"  {label:<30} {median:.3f}x  (median of {len(ratios)} chunks, "
            f"quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f}; "
            f"totals {whole:.3f}x; target ≤ {target:.2f}x: {'met' if median <= target else 'NOT met'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--chunk", type=int, default=256, help="tokens per pass (the server's write chunk)")
    parser.add_argument("--repeats", type=int, default=1, help="passes over --tokens (each chunk is a measured triple)")
    parser.add_argument("--seeds", default="0,1,2", help="per-layer rows on each; the rest: the first")
    parser.add_argument("--layer-repeats", type=int, default=10, help="repetitions of the per-layer rows, per seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--growth", type=int, default=100_000,
                        help="tokens written for the memory-growth rows (0: skip)")
    parser.add_argument("--growth-hidden", type=int, default=None,
                        help="hidden size of the growth model (default: the same)")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True) for the whole run")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model and few tokens: checks the script, not a figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        parser.error("--flush-denormal: this CPU cannot flush denormals")
    shape = QUICK_SHAPE if args.quick else QWEN3_SHAPE
    if args.quick:
        args.tokens, args.chunk, args.repeats, args.growth, args.layer_repeats = 256, 64, 2, 4000, 3
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    args.seed = seeds[0]
    began = time.perf_counter()

    by_seed, in_situ, ms_plain = {}, {}, {}
    for seed in seeds:  # the per-layer rows: the firm figures
        model, mem = build(shape, seed)
        ids = torch.randint(3, shape["vocab_size"], (1, args.chunk), generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            times = memory_layers.layer_times(model, mem, ids, args.layer_repeats)
        by_seed[seed] = memory_layers.ratios(times)
        in_situ[seed] = memory_layers.ratios(times, in_situ=True)
        ms_plain[seed] = statistics.median(row["plain"] for rows in times for row in rows) * 1000
        print(f"per-layer rows, seed {seed} done, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        del model, mem
        gc.collect()
    model, mem = build(shape, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(3, shape["vocab_size"], (1, args.tokens), generator=generator)
    runs = []
    with torch.inference_mode():
        passes(model, mem, tokens[:, : args.chunk], args.chunk)  # warm-up, and a non-zero state to start from
        for repeat in range(args.repeats if args.tokens > 0 else 0):
            runs.append(passes(model, mem, tokens, args.chunk))
            print(f"repeat {repeat + 1} of {args.repeats} done, {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
    saves, loads, size = state_file(mem, max(5, args.repeats))

    print(
        f"random Qwen3: hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
        f"vocab {shape['vocab_size']}; δ-mem TSW rank 8; chunks of {args.chunk} tokens; seeds {args.seeds}; "
        f"{args.threads} thread(s)"
        + (", denormals flushed" if args.flush_denormal else "")
    )
    print("\n".join(memory_layers.report(by_seed, in_situ, ms_plain, shape["num_hidden_layers"], args.layer_repeats)))
    if runs:
        whole_model(runs, args)
    print(
        f"  state file {size:,} bytes; save p50 {statistics.median(saves) * 1000:.2f} ms, "
        f"load p50 {statistics.median(loads) * 1000:.2f} ms ({len(saves)} each)"
    )

    if args.growth <= 0:
        print(f"  wall time {time.perf_counter() - began:.0f} s")
        return
    growth_shape = shape
    if args.growth_hidden is not None:
        growth_shape = dict(
            shape, hidden_size=args.growth_hidden, intermediate_size=3 * args.growth_hidden,
            head_dim=max(16, args.growth_hidden // shape["num_attention_heads"]),
        )
        del model, mem
        gc.collect()
        model, mem = build(growth_shape, args.seed)
    rows = growth(model, mem, growth_shape["vocab_size"], args.seed, args.chunk, [1000, args.growth])
    hidden, layers = growth_shape["hidden_size"], growth_shape["num_hidden_layers"]
    print(f"  process memory writing on hidden {hidden}, {layers} layers:")
    for written, rss, peak in rows:
        print(f"    after {written:>7,} tokens written  RSS {rss:8.1f} MiB   peak {peak:8.1f} MiB")
    (_, rss_1k, peak_1k), (_, rss_n, peak_n) = rows
    print(f"    growth from 1k to {args.growth:,} tokens: RSS {rss_n - rss_1k:+.1f} MiB, "
          f"peak {peak_n - peak_1k:+.1f} MiB")
    print(f"  wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
