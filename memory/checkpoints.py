"""Training checkpoints: enough to resume a run exactly where it stopped.

A checkpoint is a directory:

    adapter_config.json, adapter.safetensors   the adapter so far, in our format (loadable as is)
    optimizer.pt                               the optimizer's state_dict
    rng.pt                                     torch (CPU and CUDA) and Python random states
    trainer_state.json                         step, the loss rows so far, and what the run
                                               depends on (seed, data, accumulation, ...)

It is written to a temporary sibling and renamed into place, so a run killed mid-save
never leaves a half checkpoint behind. Pickles are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from .adapter_io import read_adapter, save_adapter
from .model import Memory

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "STATE_NAME"]

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
RNG_NAME = "rng.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, with the reason."""


def save_checkpoint(
    directory: Path,
    mem: Memory,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    base_model_id: str | None = None,
) -> Path:
    """Write a checkpoint to ``directory`` (replacing one there); returns it."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_adapter(mem, partial, base_model_id=base_model_id)
    torch.save(optimizer.state_dict(), partial / OPTIMIZER_NAME)
    rng = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
    }
    torch.save(rng, partial / RNG_NAME)
    (partial / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(partial, directory)
    return directory


def load_checkpoint(
    directory: Path, mem: Memory, optimizer: torch.optim.Optimizer, expected: dict[str, Any]
) -> dict[str, Any]:
    """Restore the adapter, optimizer and RNG states from ``directory``; returns its trainer state.

    ``expected`` holds what the resumed run must share with the checkpointed one (seed, data
    fingerprint, accumulation, ...); any difference is refused by name, because the order of
    the episodes, and so the result, would silently change.
    """
    directory = Path(directory)
    state_path = directory / STATE_NAME
    if not state_path.is_file():
        raise CheckpointError(f"{directory} is not a training checkpoint: {STATE_NAME} is missing")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {state_path}: {error}") from error
    differ = [
        f"{key}: checkpoint {state.get('run', {}).get(key)!r}, now {value!r}"
        for key, value in expected.items()
        if state.get("run", {}).get(key) != value
    ]
    if differ:
        raise CheckpointError(f"cannot resume from {directory}, the run differs: " + "; ".join(differ))
    _, tensors, _ = read_adapter(directory)  # checks the weights' sha256
    try:
        mem.load_adapter_state_dict(tensors)
    except ValueError as error:
        raise CheckpointError(f"{directory}: {error}") from error
    for name in (OPTIMIZER_NAME, RNG_NAME):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name} is missing")
    try:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER_NAME, map_location="cpu", weights_only=True))
        rng = torch.load(directory / RNG_NAME, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise CheckpointError(f"cannot restore {directory}: {error}") from error
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(_as_python_state(rng["python"]))
    return state


def _as_python_state(state: Any) -> tuple:
    """random.getstate() survives torch.save as nested tuples or lists; setstate needs tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
