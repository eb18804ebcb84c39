"""One attention layer's δ-mem: its parameters, projections and corrections.

Parameter names and layouts follow the official release (``nn.Linear`` weights, [out, in]),
so its adapter files map onto these modules by renaming keys, nothing else:

    memory_q_proj, memory_k_proj, memory_v_proj, beta_proj   [h·r, H]
    beta_bias                                                [h·r]
    delta_q_proj                                             [q_out, h·r]
    delta_o_proj                                             [o_out, h·r]

Parameters are float32 whatever the model's dtype; inputs are cast up, corrections are
cast back by the wrapper that adds them.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DeltaMemConfig

__all__ = ["DeltaMemLayer", "PARAMETER_NAMES", "base_weight"]

PARAMETER_NAMES = (
    "memory_q_proj",
    "memory_k_proj",
    "memory_v_proj",
    "beta_proj",
    "beta_bias",
    "delta_q_proj",
    "delta_o_proj",
)


def base_weight(linear: nn.Module) -> torch.Tensor:
    """A projection's weight as a float32 [out, in] tensor; bitsandbytes 4-bit is dequantized."""
    weight = cast(torch.Tensor, linear.weight)
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is not None:
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, quant_state).float()
    if not weight.is_floating_point():
        raise TypeError(
            f"cannot read the base weight of {type(linear).__name__} ({weight.dtype}) to initialise δ-mem; "
            "use a full-precision or 4-bit (NF4/FP4) model"
        )
    return weight.detach().float()


class DeltaMemLayer(nn.Module):
    """The δ-mem of one attention layer (no state: states live in ``memory.Memory``)."""

    def __init__(
        self,
        index: int,
        hidden_size: int,
        q_out: int,
        o_out: int,
        config: DeltaMemConfig,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.index = index
        self.config = config
        w = config.width

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=torch.float32, device=device))

        self.memory_q_proj = param(w, hidden_size)
        self.memory_k_proj = param(w, hidden_size)
        self.memory_v_proj = param(w, hidden_size)
        self.beta_proj = param(w, hidden_size)
        self.beta_bias = param(w)
        self.delta_q_proj = param(q_out, w)
        self.delta_o_proj = param(o_out, w)

    def reset_parameters(self, q_weight: torch.Tensor, o_weight: torch.Tensor) -> None:
        """The paper's initialisation, given the base q_proj and o_proj weights ([out, in]).

        Wq, Wk, Wv kaiming-uniform; Wβ = 0, bβ = beta_bias_init; W_dq and W_do zero except
        their first r columns: the base weight's first r input columns, unit-normalised,
        times delta_init_scale. With a zero state the model's output is the base model's.
        """
        r = self.config.rank
        with torch.no_grad():
            for weight in (self.memory_q_proj, self.memory_k_proj, self.memory_v_proj):
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            self.beta_proj.zero_()
            self.beta_bias.fill_(self.config.beta_bias_init)
            for delta, base in ((self.delta_q_proj, q_weight), (self.delta_o_proj, o_weight)):
                delta.zero_()
                columns = base[:, :r].to(delta.device, torch.float32)  # [out, r]
                delta[:, :r] = F.normalize(columns, dim=0) * self.config.delta_init_scale

    def project_read(self, x: torch.Tensor) -> torch.Tensor:
        """q = normalize(tanh(x Wq)) per head. x [B, T, H] -> q [B, T, h, r] (float32)."""
        q = F.linear(x.float(), self.memory_q_proj)
        return F.normalize(torch.tanh(self._heads(q)), dim=-1, eps=1e-6)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Everything a write pass needs.

        x [B, T, H] -> q, k, v, β, log λ, each [B, T, h, r] (float32), with
        q, k = normalize(tanh(·)) per head, v as is, β = sigmoid(x Wβ + bβ) and
        log λ = log(1 - β) = logsigmoid(-(x Wβ + bβ)) computed without cancellation.
        """
        x = x.float()
        k = F.normalize(torch.tanh(self._heads(F.linear(x, self.memory_k_proj))), dim=-1, eps=1e-6)
        v = self._heads(F.linear(x, self.memory_v_proj))
        z = self._heads(F.linear(x, self.beta_proj, self.beta_bias))
        return self.project_read(x), k, v, torch.sigmoid(z), F.logsigmoid(-z)

    def corrections(self, o: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reads o [B, T, h, r] -> (s·o W_dqᵀ [B, T, q_out], s·o W_doᵀ [B, T, o_out])."""
        o = o.flatten(-2) * self.config.scaling  # [B, T, h·r]
        return F.linear(o, self.delta_q_proj), F.linear(o, self.delta_o_proj)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.config.state_heads, self.config.rank))  # [B, T, h, r]

    def extra_repr(self) -> str:
        return f"index={self.index}, rank={self.config.rank}, state_heads={self.config.state_heads}"
