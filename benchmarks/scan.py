"""Naive per-token delta-rule loop vs the chunked fast path, side by side in one run.

The naive loop is the algorithm the official implementation runs on CPU: one read and one
gated delta-rule write per token, per layer. Both paths get the same inputs (T tokens,
rank r, one state head, one call per layer as in a model's forward) and the script prints
both times, the ratio and the largest relative error of the fast path.

    .venv/bin/python benchmarks/scan.py [--tokens 8192] [--layers 36] [--rank 8] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memory.delta_rule import delta_rule_chunked, delta_rule_naive  # noqa: E402


def make_inputs(tokens: int, rank: int, heads: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like one layer's projections: unit q, k; β from sigmoid logits near init."""
    shape = (1, tokens, heads, rank)
    q = F.normalize(torch.tanh(torch.randn(shape, generator=generator)), dim=-1, eps=1e-6)
    k = F.normalize(torch.tanh(torch.randn(shape, generator=generator)), dim=-1, eps=1e-6)
    v = torch.randn(shape, generator=generator)
    logits = torch.randn(shape, generator=generator) - 1.5  # b_beta is initialised to -1.5
    return q, k, v, torch.sigmoid(logits), F.logsigmoid(-logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=3, help="fast-path repeats; the best is reported")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    layers = [make_inputs(args.tokens, args.rank, args.heads, generator) for _ in range(args.layers)]

    with torch.no_grad():
        start = time.perf_counter()
        naive = [delta_rule_naive(q, k, v, beta, log_lam=log_lam) for q, k, v, beta, log_lam in layers]
        naive_s = time.perf_counter() - start

        fast_s = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            fast = [delta_rule_chunked(q, k, v, beta, log_lam=log_lam) for q, k, v, beta, log_lam in layers]
            fast_s = min(fast_s, time.perf_counter() - start)

    def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
        return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()

    error = max(
        max(relative_error(o_f, o_n), relative_error(S_f, S_n))
        for (o_f, S_f), (o_n, S_n) in zip(fast, naive, strict=True)
    )
    print(f"T={args.tokens} rank={args.rank} heads={args.heads} layers={args.layers} threads={torch.get_num_threads()}")
    print(f"naive per-token loop : {naive_s:8.3f} s")
    print(f"chunked fast path    : {fast_s:8.3f} s")
    print(f"ratio                : {naive_s / fast_s:8.1f}x")
    print(f"max relative error   : {error:.2e}")


if __name__ == "__main__":
    main()
