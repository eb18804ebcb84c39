"""The schedule of a training run: which episode each step takes, and at what learning rate.

``EpisodeOrder`` deals the training episodes out to (step, micro-step, process) in a seeded
shuffle per epoch, a function of the step alone, so a run resumed from a checkpoint takes
exactly the steps the uninterrupted run would have taken. ``learning_rate`` is linear
warm-up over ``warmup_steps``, then constant or a cosine decay towards 0 at the last step.
"""

from __future__ import annotations

import math

import torch

from .train_options import TrainOptions

__all__ = ["EpisodeOrder", "learning_rate"]


class EpisodeOrder:
    """Which training episode each process takes at (step, micro-step): a seeded shuffle per epoch."""

    def __init__(self, episodes: int, seed: int, per_step: int, processes: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.per_step, self.processes = episodes, seed, per_step, processes
        self.shuffle = shuffle
        self._order: tuple[int, list[int]] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / (self.per_step * self.processes))

    def index(self, step: int, micro: int, process: int) -> int:
        epoch, position = divmod((step * self.per_step + micro) * self.processes + process, self.n)
        if not self.shuffle:
            return position
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.n, generator=generator).tolist())
        return self._order[1][position]


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``: linear warm-up over
    ``warmup_steps``, then constant or a cosine decay towards 0 at the last step."""
    factor = 1.0
    if options.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * step / total))
    if options.warmup_steps:
        factor = min(factor, (step + 1) / options.warmup_steps)
    return options.lr * factor
