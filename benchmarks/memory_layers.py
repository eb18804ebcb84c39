"""δ-mem's cost per decoder layer, for benchmarks/memory_write.py: the firm figures.

A whole-model pass is ~2 CPU s here, and one chunk's ratio spreads ±5–10% on a shared
machine, so a 1–3% cost does not show at the model level. Here each decoder layer is called
on its own, on the input a plain forward of one chunk gave it, and each repetition runs four
kinds back to back (the order rotating), so they share the same moment of the machine:

- ``plain``: the layer's plain forward, every store zero (δ-mem's read path skipped),
- ``write``: the same inside ``Memory.writing`` (the chunked delta rule and its read),
- ``read``: a read-only forward with a non-zero state,
- ``read0``: a read-only forward with a zero state forced through the read path (the same
  arithmetic on zeros: what the values themselves cost, e.g. denormals; expected 1.00×).

The ratios write / plain (the write path's added cost, target ≤ 1.05×), read / plain (what
the read costs, target ≤ 1.02×) and read / read0 are taken per repetition and layer; the
figure is their median, with quartiles, pooled over layers and repetitions.

A ~180 ms layer forward still spreads ±7% from one call to the next on a shared machine, so
those medians are good to about ±2%. The firmer figure times δ-mem's own work where it runs:
every δ-mem change to a layer's forward happens inside its q_proj and o_proj wrappers
(``MemoryLinear``: the base projection, then the correction: the write or read and the add),
so forward hooks time each wrapper and its base projection, and the difference is what
δ-mem adds (a few ms, whose median is steady). ``in situ`` ratios are then
1 + (added in this kind − added in the plain forward) / the plain layer, per repetition.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

import memory

KINDS = ("plain", "write", "read", "read0")
RATIOS = (
    ("write", "plain", "write path / plain layer", 1.05),
    ("read", "plain", "read non-zero / plain layer", 1.02),
    ("read", "read0", "read non-zero / zero-state read", None),
)


@dataclass
class Ratio:
    median: float
    low: float
    high: float
    layer_medians: tuple[float, float]  # the lowest and highest of the layers' own medians
    count: int


def layer_inputs(model, ids: torch.Tensor) -> list[tuple[tuple, dict]]:
    """(args, kwargs) each decoder layer got in a plain forward of ``ids``."""
    captured: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        captured.append((args, dict(kwargs)))

    hooks = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in model.model.layers]
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


class AddedTime:
    """CPU seconds δ-mem's wrappers spent beyond their base projections, summed since ``take``."""

    def __init__(self, model) -> None:
        self.added = 0.0
        self._start: dict[int, float] = {}
        self._hooks = []
        for layer in model.model.layers:
            for wrapper in (layer.self_attn.q_proj, layer.self_attn.o_proj):
                for module, sign in ((wrapper, 1.0), (wrapper.base_layer, -1.0)):
                    self._hooks.append(module.register_forward_pre_hook(self._begin))
                    self._hooks.append(module.register_forward_hook(self._end_hook(sign)))

    def _begin(self, module, args) -> None:
        self._start[id(module)] = time.process_time()

    def _end_hook(self, sign: float):
        def end(module, args, output) -> None:
            self.added += sign * (time.process_time() - self._start.pop(id(module)))

        return end

    def take(self) -> float:
        added, self.added = self.added, 0.0
        return added

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _timed(layer, args: tuple, kwargs: dict, added: AddedTime, row: dict[str, float], kind: str) -> None:
    added.take()
    start = time.process_time()
    layer(*args, **kwargs)
    row[kind] = time.process_time() - start
    row[kind + "+"] = added.take()


def layer_times(model, mem: memory.Memory, ids: torch.Tensor, repeats: int) -> list[list[dict[str, float]]]:
    """CPU seconds of every kind, per layer, per repetition: ``[layer][repeat][kind]``."""
    store = "edits"
    with mem.writing(store=store):  # a non-zero state to read and to write on
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    written = mem.states()
    mem.reset()
    inputs = layer_inputs(model, ids)
    times: list[list[dict[str, float]]] = [[] for _ in inputs]
    added = AddedTime(model)
    for repeat in range(-1, repeats):  # repeat -1: a warm-up, not kept
        for index, (layer, (args, kwargs)) in enumerate(zip(model.model.layers, inputs, strict=True)):
            row = {}
            turn = (repeat + index) % len(KINDS)
            for kind in KINDS[turn:] + KINDS[:turn]:
                if kind == "plain":
                    mem.reset()
                    _timed(layer, args, kwargs, added, row, kind)
                elif kind == "write":
                    mem.load_states(written)
                    with mem.writing(store=store):
                        _timed(layer, args, kwargs, added, row, kind)
                elif kind == "read":
                    mem.load_states(written)
                    _timed(layer, args, kwargs, added, row, kind)
                else:
                    mem.reset()
                    mem._nonzero.add(store)  # a zero state read as if it were not: the same arithmetic
                    _timed(layer, args, kwargs, added, row, kind)
            if repeat >= 0:
                times[index].append(row)
    added.remove()
    mem.reset()
    mem._clear_pending()
    return times


def _in_situ(row: dict[str, float], top: str, bottom: str) -> float:
    plain, base = row["plain"], row["plain+"]
    return (plain + row[top + "+"] - base) / (plain + row[bottom + "+"] - base)


def ratios(times: list[list[dict[str, float]]], in_situ: bool = False) -> dict[str, Ratio]:
    """Each of RATIOS (whole layers or in situ) over every (layer, repetition), keyed by its label."""
    out = {}
    for top, bottom, label, _ in RATIOS:
        per_layer = [
            [_in_situ(row, top, bottom) if in_situ else row[top] / row[bottom] for row in rows] for rows in times
        ]
        pooled = sorted(r for rows in per_layer for r in rows)
        median = statistics.median(pooled)
        low, _, high = statistics.quantiles(pooled, n=4) if len(pooled) > 1 else [median] * 3
        medians = [statistics.median(rows) for rows in per_layer]
        out[label] = Ratio(median, low, high, (min(medians), max(medians)), len(pooled))
    return out


def report(
    by_seed: dict[int, dict[str, Ratio]],
    in_situ: dict[int, dict[str, Ratio]],
    ms_plain: dict[int, float],
    layers: int,
    repeats: int,
) -> list[str]:
    """The per-layer rows: every seed's ratios, whole layers and in situ, then the worst seeds'."""
    lines = [f"  per layer ({layers} layers x {repeats} repetitions per seed, one chunk, the four kinds side by side):"]
    for seed, result in by_seed.items():
        lines.append(f"    seed {seed} (plain layer {ms_plain[seed]:.1f} ms median):")
        for how, results in (("layer", result), ("in situ", in_situ[seed])):
            for _, _, label, _ in RATIOS:
                r = results[label]
                lines.append(
                    f"      {how:<8}{label:<32} {r.median:.3f}x  (quartiles {r.low:.3f}-{r.high:.3f}; "
                    f"layers' medians {r.layer_medians[0]:.3f}-{r.layer_medians[1]:.3f})"
                )
    for how, results in (("whole layer, ±2% here", by_seed), ("in situ, the firm figure", in_situ)):
        lines.append(f"  worst seed, {how}:")
        for _, _, label, target in RATIOS:
            worst_seed = max(results, key=lambda s: results[s][label].median)
            worst = results[worst_seed][label].median
            verdict = (
                f"target ≤ {target:.2f}x: {'met' if worst <= target else 'NOT met'}" if target else "expected 1.00x"
            )
            lines.append(f"    {label:<32} {worst:.3f}x (seed {worst_seed}; {verdict})")
    return lines
