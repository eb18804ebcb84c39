"""Several episodes in one forward: each written into and read from a state of its own.

``RowsLoss`` is the loss of B independent episodes computed together. ``Memory.reset(rows=B)``
gives every store B zero states; write pass j of every episode runs as one batch (row i into
state i alone), then every read of every episode runs as one batch, each row reading its
episode's state (``Memory.select_rows``). The result is the loss of writing and reading the
episodes one by one: the mean cross-entropy over all their target tokens (tested).

Rows are right-padded, so a real token never attends to a pad (attention is causal) and
keeps its position; pads and the rows of episodes that have fewer write passes are marked
segment -1, which is never written (TSW: β = 0, λ = 1; SSW: left out of every mean). No
attention mask is passed: a row is never all padding, and its real tokens compute what
they compute alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .episodes import Episode
from .model import Memory

__all__ = ["Rows", "RowsLoss", "history_passes", "rows_loss", "rows_tensors"]

Pass = tuple[list[int], list[int]]
"""One write pass: token ids and a segment id per token."""


def history_passes(episode: Episode, write_tokens: int, chunk_tokens: int = 0) -> list[Pass]:
    """The write passes of an episode's history, as lists: (ids, segment ids).

    The history keeps its last ``write_tokens``. With ``chunk_tokens`` each piece of it is
    written in passes of at most that many tokens, each pass one segment (as the server
    writes); with 0 the whole history is one pass, each piece one segment.
    """
    ids: list[int] = []
    segment_ids: list[int] = []
    for index, piece in enumerate(episode.history):
        ids.extend(piece)
        segment_ids.extend([index] * len(piece))
    ids, segment_ids = ids[-write_tokens:], segment_ids[-write_tokens:]
    if not chunk_tokens:
        return [(ids, segment_ids)] if ids else []
    pieces: list[list[int]] = []
    for position, token in enumerate(ids):
        if position == 0 or segment_ids[position] != segment_ids[position - 1] or len(pieces[-1]) == chunk_tokens:
            pieces.append([])
        pieces[-1].append(token)
    return [(piece, [0] * len(piece)) for piece in pieces]


@dataclass(frozen=True)
class Rows:
    """The tensors of ``RowsLoss`` for B episodes with R reads in all."""

    passes: list[tuple[torch.Tensor, torch.Tensor]]
    """Write pass j of every episode: (ids [B, W_j], segments [B, W_j], -1 = not written)."""
    sequences: torch.Tensor
    """[R, T] every read's query then target, right-padded."""
    starts: list[int]
    """Per read: the position of its query's last token (it predicts the first target token)."""
    targets: list[torch.Tensor]
    """Per read: its target ids [N_r]."""
    episode_of: list[int]
    """Per read: the episode (row of the written states) it reads from."""


def _padded(rows: Sequence[Sequence[int]], fill: int, device: torch.device | str) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[*row, *[fill] * (width - len(row))] for row in rows], device=device)


def rows_tensors(
    episodes: Sequence[Episode], write_tokens: int, device: torch.device | str, chunk_tokens: int = 0
) -> Rows:
    """The inputs of ``RowsLoss`` for ``episodes``: pass j of each in one batch, every read in one."""
    per_episode = [history_passes(episode, write_tokens, chunk_tokens) for episode in episodes]
    passes = []
    for j in range(max(len(p) for p in per_episode)):
        ids = [p[j][0] if j < len(p) else [0] for p in per_episode]  # no pass j: one token, not written
        segments = [p[j][1] if j < len(p) else [-1] for p in per_episode]
        passes.append((_padded(ids, 0, device), _padded(segments, -1, device)))
    reads = [(i, query, target) for i, episode in enumerate(episodes) for query, target in episode.queries]
    return Rows(
        passes=passes,
        sequences=_padded([[*query, *target] for _, query, target in reads], 0, device),
        starts=[len(query) - 1 for _, query, _ in reads],
        targets=[torch.tensor(target, device=device) for _, _, target in reads],
        episode_of=[i for i, _, _ in reads],
    )


def rows_loss(mem: Memory, rows: Rows, use_memory: bool = True) -> torch.Tensor:
    """Zero B states, write pass j of every episode at once, read every read from its own
    episode's state: the mean cross-entropy over every target token. ``use_memory=False``
    writes nothing (the base model's loss). Leaves one shared state per store behind."""
    store = mem.stores[0]  # stores share the weights; a read sums them all
    mem.reset(rows=int(rows.passes[0][0].shape[0]) if rows.passes else 1)
    if use_memory:
        for ids, segments in rows.passes:
            with mem.writing(store, segments=segments):
                mem.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    mem.select_rows(rows.episode_of)
    width = rows.sequences.shape[1]
    keep = width - min(rows.starts)  # the logits of every read's target positions
    logits = mem.model(input_ids=rows.sequences, use_cache=False, logits_to_keep=keep).logits  # [R, keep, V]
    first = width - keep
    predicted = torch.cat([
        logits[r, start - first : start - first + len(target)]
        for r, (start, target) in enumerate(zip(rows.starts, rows.targets, strict=True))
    ])
    loss = F.cross_entropy(predicted.float(), torch.cat(rows.targets))
    mem.reset()  # one shared state per store again (the graph keeps what backward needs)
    return loss


class RowsLoss(nn.Module):
    """``rows_loss`` as a module: B episodes as one forward per write pass and one read."""

    def __init__(self, mem: Memory) -> None:
        super().__init__()
        self.model = mem.model
        self.memory = mem

    def forward(self, rows: Rows, use_memory: bool = True) -> torch.Tensor:
        return rows_loss(self.memory, rows, use_memory)
