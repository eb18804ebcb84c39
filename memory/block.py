"""One attention block with δ-mem: its two wrapped projections and what passes between them.

The reads o of the block's input x give both corrections,

    q_proj(x) + s · o W_dqᵀ        o_proj(·) + s · o W_doᵀ

but only q_proj sees x, so the reads are computed once, in q_proj's wrapper, which adds
the first correction and keeps the second; o_proj's wrapper adds it and lets it go. That
is sound because, in every attention block, q_proj runs before o_proj in the same forward
(o_proj projects the attention output, which needs q), and a block runs once per model
forward. The pending correction belongs to its block alone and lives from one projection
to the other: an interrupted forward leaves at most one, which the block's next q_proj
replaces before its o_proj can read it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn as nn

from .layer import DeltaMemLayer
from .wrappers import MemoryLinear

__all__ = ["MemoryBlock", "Reads"]

Reads = Callable[[DeltaMemLayer, torch.Tensor], "torch.Tensor | None"]
"""(layer, x [B, T, H]) -> the reads o [B, T, h, r] of this forward (None: the state is zero)."""


class MemoryBlock:
    """An attention block's q_proj and o_proj wrapped with ``layer``'s corrections.

    ``reads`` does what a forward of the memory does with x (read, or write and read); it
    runs in float32 even under autocast. ``detach`` restores the original projections.
    """

    def __init__(self, attention: nn.Module, layer: DeltaMemLayer, reads: Reads) -> None:
        self.attention = attention
        self.layer = layer
        self._reads = reads
        self._pending_o: torch.Tensor | None = None
        """s · o W_doᵀ [B, T, o_out], from q_proj's wrapper to o_proj's (None: no correction)."""
        attention.delta_mem = layer
        attention.q_proj = MemoryLinear(cast(nn.Module, attention.q_proj), self._q_correction)
        attention.o_proj = MemoryLinear(cast(nn.Module, attention.o_proj), self._o_correction)

    def _q_correction(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
            # bf16 autocast (training on CUDA) must not reach the state: memory runs in float32,
            # and the wrapper casts the corrections to the model's dtype as it always does.
            with torch.autocast(x.device.type, enabled=False):
                return self._corrections(x)
        return self._corrections(x)

    def _corrections(self, x: torch.Tensor) -> torch.Tensor | None:
        o = self._reads(self.layer, x)
        if o is None:
            self._pending_o = None
            return None
        delta_q, self._pending_o = self.layer.corrections(o)
        return delta_q

    def _o_correction(self, _: torch.Tensor) -> torch.Tensor | None:
        delta_o, self._pending_o = self._pending_o, None
        return delta_o

    def clear(self) -> None:
        """Drop a correction an interrupted forward left pending (and the graph it holds)."""
        self._pending_o = None

    def detach(self) -> None:
        self.attention.q_proj = cast(MemoryLinear, self.attention.q_proj).base_layer
        self.attention.o_proj = cast(MemoryLinear, self.attention.o_proj).base_layer
        del self.attention.delta_mem
        self._pending_o = None
