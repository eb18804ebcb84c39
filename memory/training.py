"""Training a δ-mem adapter on episodes, as the paper trains it.

Per episode: zero every state, write the history (a write pass, gradients flowing through
the chunked scan), then read the query and target with the history absent from the prompt
(a read-only pass); the loss is the cross-entropy on the target tokens only. Only δ-mem's
parameters train: every backbone parameter has ``requires_grad=False`` and the optimizer
holds δ-mem's alone, so the backbone stays bit-identical.

    options = TrainOptions(steps=200, lr=1e-4, checkpoint_every=50)
    summary = train(mem, train_episodes, held_out, options, output=Path("my-adapter"))

``rows`` episodes per micro-step are written and read together, each with a state of its own
(``memory.batching``: the same loss as one by one), and the learning rate follows
``schedule`` after ``warmup_steps`` of linear warm-up.

Devices and processes go through ``accelerate``: one process on the CPU or a GPU, or one
per GPU under ``accelerate launch`` (episodes are dealt out per process and gradients
averaged by DDP). On CUDA the backbone runs under bf16 autocast where the GPU supports it;
δ-mem itself stays float32 (``Memory`` shields it from autocast).

The episode order is a seeded shuffle per epoch, a function of the step alone, and the
backbone runs without dropout, so a run resumed from a checkpoint takes exactly
the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .adapter_io import save_adapter
from .batching import Rows, RowsLoss, history_passes, rows_loss, rows_tensors
from .checkpoints import load_checkpoint, save_checkpoint
from .curves import write_csv, write_png
from .episodes import Episode, fingerprint
from .model import Memory

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "SCHEDULES",
    "TrainOptions",
    "TrainingError",
    "learning_rate",
    "EpisodeLoss",
    "episode_tensors",
    "evaluate",
    "freeze_backbone",
    "make_accelerator",
    "train",
    "CHECKPOINTS_DIR",
    "CURVE_CSV",
    "CURVE_PNG",
]

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
CURVE_CSV = "loss.csv"
CURVE_PNG = "loss.png"
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


class EpisodeLoss(nn.Module):
    """One episode as one forward: zero the states, write the history, read query + target.

    Returns the mean cross-entropy over the target tokens. With ``use_memory=False`` the
    history is not written, so the read sees a zeroed state: the base model's loss.
    """

    def __init__(self, mem: Memory) -> None:
        super().__init__()
        self.model = mem.model
        self.memory = mem

    def forward(
        self,
        passes: list[tuple[torch.Tensor, torch.Tensor | None, str | None]] | Rows,
        sequence: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        use_memory: bool = True,
    ) -> torch.Tensor:
        """passes: write passes, each (ids [1, W], segments [1, W] or None, store or None for the
        first store); sequence [1, Q+N]
        (query then target); target [N]. Gradients flow through the state from pass to pass.
        Or ``Rows`` alone: several episodes at once (``memory.batching.rows_loss``)."""
        if isinstance(passes, Rows):
            return rows_loss(self.memory, passes, use_memory)
        if sequence is None or target is None:
            raise TypeError("EpisodeLoss: write passes need a sequence and a target")
        self.memory.reset()
        if use_memory:
            for history, segments, store in passes:  # stores share the weights; a read sums them all
                with self.memory.writing(store or self.memory.stores[0], segments=segments):
                    self.model(input_ids=history, use_cache=False, logits_to_keep=1)
        n = target.shape[0]
        logits = self.model(input_ids=sequence, use_cache=False, logits_to_keep=n + 1).logits  # [1, N+1, V]
        return F.cross_entropy(logits[0, :-1].float(), target)  # position Q-1+i predicts target i


def episode_tensors(
    episode: Episode, write_tokens: int, segmented: bool, device: torch.device | str, chunk_tokens: int = 0
) -> tuple[list[tuple[torch.Tensor, torch.Tensor | None, str | None]], torch.Tensor, torch.Tensor]:
    """The inputs of ``EpisodeLoss`` for one episode: (write passes, sequence, target).

    The history keeps its last ``write_tokens``. With ``chunk_tokens`` each piece of it is
    written in passes of at most that many tokens, each pass one segment (as the server
    writes); with 0 each run of pieces in one store is one pass, each piece one segment. Each
    pass names its store (``Episode.stores``; None: the first store).
    """
    chunks = history_passes(episode, write_tokens, chunk_tokens)
    passes = [
        (torch.tensor([piece], device=device), torch.tensor([segments], device=device) if segmented else None, store)
        for piece, segments, store in chunks
    ]
    sequence = torch.tensor([[*episode.query, *episode.target]], device=device)
    return passes, sequence, torch.tensor(episode.target, device=device)


def freeze_backbone(mem: Memory) -> list[nn.Parameter]:
    """``requires_grad=False`` on every backbone parameter, True on δ-mem's; returns δ-mem's.

    The model goes to eval mode (no dropout: the backbone computes what it computes at
    inference), except bitsandbytes 4-bit layers, which stay in train mode: on a CPU with
    AVX512-BF16, an eval-mode 4-bit layer repacks its weight for a fast kernel that has no
    backward, and gradients through it would be silently dropped. They have no dropout.
    """
    mem.model.eval()
    for module in mem.model.modules():
        quant_state = getattr(module._parameters.get("weight"), "quant_state", None)
        if quant_state is None:
            continue
        if getattr(quant_state, "packing_format_for_cpu", False):
            raise TrainingError(
                "this 4-bit model has already run on the CPU in inference mode, which repacked its weights "
                "for a kernel without gradients; load it afresh to train, or use --quantization none"
            )
        module.train()
    for param in mem.model.parameters():
        param.requires_grad_(False)
    params = list(mem.parameters())
    for param in params:
        param.requires_grad_(True)
    return params


def make_accelerator(device: str = "auto", grad_accum: int = 1) -> Accelerator:
    """An ``accelerate.Accelerator`` for ``device`` (auto, cuda or cpu): bf16 autocast on a CUDA
    GPU that supports it, none on the CPU. Under ``accelerate launch`` each process gets its GPU."""
    if device not in ("auto", "cuda", "cpu"):
        raise TrainingError(f"device must be auto, cuda or cpu, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    from accelerate import Accelerator

    cuda = device != "cpu" and torch.cuda.is_available()
    precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    return Accelerator(cpu=not cuda, gradient_accumulation_steps=grad_accum, mixed_precision=precision)


@torch.no_grad()
def evaluate(
    mem: Memory,
    episodes: Sequence[Episode],
    write_tokens: int,
    accelerator: Accelerator | None = None,
    chunk_tokens: int = 0,
) -> dict[str, float | None]:
    """Held-out loss (per target token) with memory, and with the state zeroed.

    Under several processes each evaluates its share and the sums are reduced.
    """
    if not episodes:
        return {"eval_loss_memory": None, "eval_loss_no_memory": None}
    device = accelerator.device if accelerator is not None else _device(mem)
    rank, processes = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    loss, rows_loss = EpisodeLoss(mem), RowsLoss(mem)
    segmented = mem.config.write == "segment"
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # with memory, without, target tokens
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
    with autocast:
        for episode in episodes[rank::processes]:
            inputs: tuple[Any, ...]
            model: nn.Module
            if episode.reads:  # several reads of one history: one batch of reads
                inputs, model = (rows_tensors([episode], write_tokens, device, chunk_tokens),), rows_loss
            else:
                inputs, model = episode_tensors(episode, write_tokens, segmented, device, chunk_tokens), loss
            n = sum(len(target) for _, target in episode.queries)
            sums[0] += model(*inputs).double() * n
            sums[1] += model(*inputs, use_memory=False).double() * n
            sums[2] += n
    mem.reset()
    if accelerator is not None:
        sums = accelerator.reduce(sums, "sum")
    return {"eval_loss_memory": float(sums[0] / sums[2]), "eval_loss_no_memory": float(sums[1] / sums[2])}


class _Schedule:
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


def _device(mem: Memory) -> torch.device:
    return next(mem.parameters()).device


def learning_rate(options: TrainOptions, step: int, total: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``: linear warm-up over
    ``warmup_steps``, then constant or a cosine decay towards 0 at the last step."""
    factor = 1.0
    if options.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * step / total))
    if options.warmup_steps:
        factor = min(factor, (step + 1) / options.warmup_steps)
    return options.lr * factor


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    episodes: list[list[Episode]],
    options: TrainOptions,
    segmented: bool,
    accelerator: Accelerator,
) -> float:
    """One optimizer step over ``episodes`` (``rows`` per micro-step); returns their mean loss, over all processes."""
    losses = []
    for batch in episodes:
        inputs: tuple[Any, ...]
        if len(batch) == 1 and not batch[0].reads:  # one episode: the single-row path, as before rows existed
            inputs = episode_tensors(
                batch[0], options.write_tokens, segmented, accelerator.device, options.write_chunk_tokens
            )
        else:
            inputs = (rows_tensors(batch, options.write_tokens, accelerator.device, options.write_chunk_tokens),)
        with accelerator.accumulate(model):  # steps (and syncs) on the last micro-step only
            loss = model(*inputs)
            accelerator.backward(loss)  # divided by grad_accum
            if accelerator.sync_gradients and options.max_grad_norm:
                accelerator.clip_grad_norm_(params, options.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
    return float(accelerator.reduce(torch.stack(losses).mean(), "mean"))


def _summary(
    rows: list[dict[str, Any]],
    total: int,
    train_episodes: Sequence[Episode],
    held_out: Sequence[Episode],
    options: TrainOptions,
    processes: int,
    data_sha256: str,
) -> dict[str, Any]:
    """What the saved adapter records about its training."""
    evaluated = [row for row in rows if row.get("eval_loss_memory") is not None]
    last = evaluated[-1] if evaluated else {}
    return {
        "steps": total,
        "epochs": round(total * options.grad_accum * options.rows * processes / len(train_episodes), 3),
        "episodes": {"train": len(train_episodes), "held_out": len(held_out)},
        "data_sha256": data_sha256,
        "eval_loss_memory": last.get("eval_loss_memory"),
        "eval_loss_no_memory": last.get("eval_loss_no_memory"),
        "initial_eval_loss_memory": evaluated[0]["eval_loss_memory"] if evaluated else None,
        "final_train_loss": next((r["train_loss"] for r in reversed(rows) if r.get("train_loss") is not None), None),
        "seed": options.seed,
        "lr": options.lr,
        "grad_accum": options.grad_accum,
        "rows": options.rows,
        "warmup_steps": options.warmup_steps,
        "schedule": options.schedule,
        "write_tokens": options.write_tokens,
        "write_chunk_tokens": options.write_chunk_tokens,
        "processes": processes,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def train(
    mem: Memory,
    train_episodes: Sequence[Episode],
    held_out: Sequence[Episode],
    options: TrainOptions,
    output: str | Path,
    *,
    accelerator: Accelerator | None = None,
    resume: str | Path | None = None,
    base_model_id: str | None = None,
    data: str = "",
    started_from: str | None = None,
) -> dict[str, Any]:
    """Train ``mem``'s adapter; write it to ``output`` with its loss curve; return the summary.

    ``output`` receives the adapter in our format (its config carries the summary under
    ``training``), ``loss.csv``, ``loss.png`` (with matplotlib) and, with
    ``checkpoint_every``, ``checkpoints/step-NNNNNN/``. ``resume`` continues from such a
    checkpoint: adapter, optimizer, step and RNG states are restored.
    """
    if not train_episodes:
        raise TrainingError("no training episodes")
    output = Path(output)
    if accelerator is None:
        accelerator = make_accelerator("cpu" if _device(mem).type == "cpu" else "auto", options.grad_accum)
    if accelerator.gradient_accumulation_steps != options.grad_accum:
        raise TrainingError(
            f"the accelerator accumulates {accelerator.gradient_accumulation_steps} steps, "
            f"the options say {options.grad_accum}"
        )
    params = freeze_backbone(mem)
    random.seed(options.seed)
    torch.manual_seed(options.seed)
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=options.weight_decay)
    per_step = options.grad_accum * options.rows
    schedule = _Schedule(len(train_episodes), options.seed, per_step, accelerator.num_processes, options.shuffle)
    total = options.steps or (options.epochs or 1) * schedule.steps_per_epoch
    run = {
        "seed": options.seed,
        "grad_accum": options.grad_accum,
        "write_tokens": options.write_tokens,
        "write_chunk_tokens": options.write_chunk_tokens,
        "processes": accelerator.num_processes,
        "data_sha256": fingerprint(train_episodes),
        **({"rows": options.rows} if options.rows != 1 else {}),  # which episodes each step takes
        **({"shuffle": False} if not options.shuffle else {}),
    }
    done, rows = 0, []
    if resume is not None:
        state = load_checkpoint(Path(resume), mem, optimizer, run)
        done, rows = int(state["step"]), list(state["rows"])
        if done > total:
            raise TrainingError(f"{resume} is at step {done}, past the {total} steps asked for")
        for group in optimizer.param_groups:  # the learning rate is this run's choice
            group["lr"] = options.lr
    model = accelerator.prepare_model(EpisodeLoss(mem), device_placement=False)
    optimizer = accelerator.prepare_optimizer(optimizer)
    segmented = mem.config.write == "segment"
    eval_every = options.eval_every or options.checkpoint_every or max(1, total // 10)

    def held_out_row(step: int) -> dict[str, Any]:
        return {"step": step, **evaluate(mem, held_out, options.write_tokens, accelerator, options.write_chunk_tokens)}

    if done == 0 and held_out:
        rows.append(held_out_row(0))
    from tqdm import tqdm

    bar = tqdm(
        total=total, initial=done, desc="training δ-mem", unit="step", file=sys.stderr, dynamic_ncols=True,
        disable=not (options.progress and accelerator.is_local_main_process),
    )
    while done < total:
        episodes = [
            [train_episodes[schedule.index(done, micro * options.rows + row, accelerator.process_index)]
             for row in range(options.rows)]
            for micro in range(options.grad_accum)
        ]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(options, done, total)
        loss = _optimizer_step(model, optimizer, params, episodes, options, segmented, accelerator)
        mem.reset()  # let the last episode's graph go
        done += 1
        row = {"step": done, "train_loss": loss}
        if held_out and (done % eval_every == 0 or done == total):
            row.update(held_out_row(done))
        rows.append(row)
        bar.set_postfix({k.replace("_loss", ""): f"{v:.3f}" for k, v in row.items() if k != "step" and v is not None})
        bar.update()
        if options.checkpoint_every and done % options.checkpoint_every == 0:
            if accelerator.is_main_process:
                state = {
                    "step": done, "total_steps": total, "rows": rows, "run": run, "options": dataclasses.asdict(options)
                }
                save_checkpoint(output / CHECKPOINTS_DIR / f"step-{done:06d}", mem, optimizer, state, base_model_id)
            accelerator.wait_for_everyone()
    bar.close()

    summary = _summary(rows, total, train_episodes, held_out, options, accelerator.num_processes, run["data_sha256"])
    summary.update(data=data, started_from=started_from, resumed_from=str(resume) if resume is not None else None)
    if accelerator.is_main_process:
        extra: dict[str, Any] = {"training": summary, **({"prompt": options.prompt} if options.prompt else {})}
        save_adapter(mem, output, base_model_id=base_model_id, extra=extra)
        write_csv(rows, output / CURVE_CSV)
        if not write_png(rows, output / CURVE_PNG):
            log.warning(
                "matplotlib is not installed, so only %s was written (pip install 'dmem-lsp[train]')", CURVE_CSV
            )
    accelerator.wait_for_everyone()
    return summary
