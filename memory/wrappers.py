"""Wrappers that add δ-mem's corrections to a base projection without touching it.

As PEFT wraps a layer, ``MemoryLinear`` keeps the original module as ``base_layer``,
calls it unchanged (full precision or bitsandbytes 4-bit alike) and adds the correction
its hook returns. Everything else in the attention block -- norms, RoPE, KV cache,
sdpa/eager/flash kernels -- is the model's own code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["MemoryLinear"]

CorrectionHook = Callable[[torch.Tensor], "torch.Tensor | None"]


class MemoryLinear(nn.Module):
    """``base_layer(x) + hook(x)``; the hook returns ``None`` for "no correction"."""

    def __init__(self, base_layer: nn.Module, hook: CorrectionHook) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_hook", hook)  # a plain callable, not a submodule

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        correction = self._hook(x)
        return out if correction is None else out + correction.to(out.dtype)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # weight, in_features, quant_state ...: the base layer's
            return getattr(self.base_layer, name)
