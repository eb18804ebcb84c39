"""How one training run goes: ``TrainOptions``, validated at construction, and ``TrainingError``.

A bad value is refused by name (``TrainOptions.rows=0: must be a positive integer``); what
the trainer cannot do with valid options (no episodes, a checkpoint past the steps asked
for) is a ``TrainingError`` with a message a user can act on. Imports nothing but the
standard library; ``memory.training`` re-exports both.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROMPTS", "SCHEDULES", "TrainOptions", "TrainingError"]

SCHEDULES = ("constant", "cosine")
PROMPTS = ("fim", "chat")


class TrainingError(ValueError):
    """Training cannot start or go on, with a message a user can act on."""


@dataclass(frozen=True)
class TrainOptions:
    """How one training run goes. Validated at construction; a bad value is refused by name."""

    steps: int | None = None
    """Optimizer steps to train for (each takes ``grad_accum × rows`` episodes per process)."""
    epochs: int | None = None
    """Or passes over the training episodes (one when neither is given)."""
    lr: float = 1e-4
    """AdamW's peak learning rate (see ``schedule``)."""
    grad_accum: int = 1
    """Micro-steps whose gradients are summed into one optimizer step (per process)."""
    rows: int = 1
    """Independent episodes per micro-step, written and read together in one batch, each
    into a state of its own (1: one episode at a time). The loss is the mean over their
    target tokens."""
    warmup_steps: int = 0
    """Steps of linear warm-up from ``lr / warmup_steps`` to ``lr``."""
    schedule: str = "constant"
    """The learning rate after warm-up: "constant", or "cosine" (decaying to 0 at the last step)."""
    shuffle: bool = True
    """Take the episodes in a seeded shuffle per epoch; False: in the order given (a curriculum)."""
    prompt: str | None = None
    """The completion prompt shape the episodes' queries have ("fim" | "chat"), recorded in the
    adapter's config as ``"prompt"`` so that the server builds the same (None: not recorded)."""
    write_tokens: int = 1024
    """The most history tokens written per episode: longer histories keep their last ones."""
    write_chunk_tokens: int = 256
    """Write each piece of the history (a file, a diff, a message) as its own write passes of
    at most this many tokens, as the server writes its events (``memory.writeChunkTokens``);
    0 writes the whole history in one pass, as the paper does."""
    seed: int = 0
    """Seeds the episode order, torch and Python's random."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0: never)."""
    eval_every: int | None = None
    """Evaluate the held-out episodes every this many steps (default: at each checkpoint, or
    ten times per run); always before the first step and after the last."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"TrainOptions.{name}={getattr(self, name)!r}: {why}")

        if self.steps is not None and self.epochs is not None:
            raise bad("steps", "give steps or epochs, not both")
        for name in ("steps", "epochs", "eval_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise bad(name, "must be a positive integer")
        for name in ("grad_accum", "write_tokens", "rows"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if not isinstance(self.write_chunk_tokens, int) or self.write_chunk_tokens < 0:
            raise bad("write_chunk_tokens", "must be 0 (one pass) or a positive integer")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            raise bad("checkpoint_every", "must be 0 (never) or a positive integer")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad("warmup_steps", "must be 0 (none) or a positive integer")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.prompt is not None and self.prompt not in PROMPTS:
            raise bad("prompt", f"must be one of {', '.join(PROMPTS)} or None")
        if not self.lr > 0:
            raise bad("lr", "must be positive")
        if self.max_grad_norm < 0 or self.weight_decay < 0:
            raise bad("max_grad_norm" if self.max_grad_norm < 0 else "weight_decay", "must not be negative")
