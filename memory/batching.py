"""Several episodes in one forward: each written into and read from a state of its own.

``RowsLoss`` is the loss of B independent episodes computed together. ``Memory.reset(rows=B)``
gives every store B zero states; write pass j of every episode runs as one batch (row i into
state i alone; one batch per store when their passes j go into different stores), then every
read of every episode runs as one batch, each row reading its episode's state
(``Memory.select_rows``). The result is the loss of writing and reading the episodes one by
one: the mean cross-entropy over all their target tokens (tested).

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

Pass = tuple[list[int], list[int], str | None]
"""One write pass: token ids, a segment id per token, and the store it is written into
(None: the memory's first store)."""


def history_passes(episode: Episode, write_tokens: int, chunk_tokens: int = 0) -> list[Pass]:
    """The write passes of an episode's history, as lists: (ids, segment ids, store).

    The history keeps its last ``write_tokens``. With ``chunk_tokens`` each piece of it is
    written in passes of at most that many tokens, each pass one segment (as the server
    writes); with 0 each run of pieces in one store is one pass, each piece one segment (a
    history in one store: one pass, as the paper writes). Each pass goes into its piece's
    store (``Episode.stores``), in the history's order.
    """
    ids: list[int] = []
    segment_ids: list[int] = []
    for index, piece in enumerate(episode.history):
        ids.extend(piece)
        segment_ids.extend([index] * len(piece))
    ids, segment_ids = ids[-write_tokens:], segment_ids[-write_tokens:]
    stores = episode.stores

    def store(position: int) -> str | None:
        return stores[segment_ids[position]] if stores else None

    passes: list[Pass] = []
    for position, token in enumerate(ids):
        if (
            position == 0
            or store(position) != store(position - 1)
            or chunk_tokens
            and (segment_ids[position] != segment_ids[position - 1] or len(passes[-1][0]) == chunk_tokens)
        ):
            passes.append(([], [], store(position)))
        passes[-1][0].append(token)
        passes[-1][1].append(0 if chunk_tokens else segment_ids[position])
    return passes


@dataclass(frozen=True)
class Rows:
    """The tensors of ``RowsLoss`` for B episodes with R reads in all."""

    passes: list[tuple[str | None, torch.Tensor, torch.Tensor]]
    """The write passes, in order: (store, ids [B, W], segments [B, W], -1 = not written);
    pass j of every episode whose pass j goes into that store (None: the first store)."""
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
    """The inputs of ``RowsLoss`` for ``episodes``: pass j of each in one batch per store
    (one batch when their pass j goes into one store), every read in one."""
    per_episode = [history_passes(episode, write_tokens, chunk_tokens) for episode in episodes]
    passes = []
    for j in range(max(len(p) for p in per_episode)):
        for store in dict.fromkeys(p[j][2] for p in per_episode if j < len(p)):  # in order of first use
            here = [j < len(p) and p[j][2] == store for p in per_episode]  # elsewhere: one token, not written
            ids = [p[j][0] if mine else [0] for p, mine in zip(per_episode, here, strict=True)]
            segments = [p[j][1] if mine else [-1] for p, mine in zip(per_episode, here, strict=True)]
            passes.append((store, _padded(ids, 0, device), _padded(segments, -1, device)))
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
    mem.reset(rows=int(rows.passes[0][1].shape[0]) if rows.passes else 1)
    if use_memory:
        for store, ids, segments in rows.passes:  # stores share the weights; a read sums them all
            with mem.writing(store or mem.stores[0], segments=segments):
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
