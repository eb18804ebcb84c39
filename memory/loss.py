"""The training objective of one episode, and the held-out loss with and without memory.

``EpisodeLoss`` is one episode as one forward: zero every state, write the history (a write
pass, gradients flowing through the chunked scan), then read the query and target with the
history absent from the prompt; the loss is the cross-entropy on the target tokens only.
``evaluate`` is its mean over held-out episodes per target token, with the history written
and with the state left zeroed (the base model's loss), reduced over processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .batching import Rows, RowsLoss, history_passes, rows_loss, rows_tensors
from .episodes import Episode
from .model import Memory

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["EpisodeLoss", "episode_tensors", "evaluate", "memory_device"]


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
    device = accelerator.device if accelerator is not None else memory_device(mem)
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


def memory_device(mem: Memory) -> torch.device:
    """The device δ-mem's parameters are on."""
    return next(mem.parameters()).device
