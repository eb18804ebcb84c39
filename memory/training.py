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

The options are ``memory.train_options``, the loss and the held-out evaluation
``memory.loss``, the episode order and the learning rate ``memory.schedule``; their public
names are re-exported here, so a training script imports from this module alone.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .adapter_io import save_adapter
from .batching import rows_tensors
from .checkpoints import load_checkpoint, save_checkpoint
from .curves import write_csv, write_png
from .episodes import Episode, fingerprint
from .loss import EpisodeLoss, episode_tensors, evaluate, memory_device
from .model import Memory
from .schedule import EpisodeOrder, learning_rate
from .train_options import SCHEDULES, TrainingError, TrainOptions

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
        accelerator = make_accelerator("cpu" if memory_device(mem).type == "cpu" else "auto", options.grad_accum)
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
    schedule = EpisodeOrder(len(train_episodes), options.seed, per_step, accelerator.num_processes, options.shuffle)
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
