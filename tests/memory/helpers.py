"""Helpers for the memory tests: adapters strong enough that memory visibly matters."""

from __future__ import annotations

import torch

import memory


def strengthen(mem: memory.Memory, seed: int = 0, scale: float = 0.5) -> None:
    """Random weights (the same for a seed), so that a written state changes the logits clearly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in mem.layers:
            for param in (layer.memory_q_proj, layer.memory_k_proj, layer.memory_v_proj):
                param.copy_(torch.randn(param.shape, generator=g) * 0.2)
            for param in (layer.beta_proj, layer.delta_q_proj, layer.delta_o_proj):
                param.copy_(torch.randn(param.shape, generator=g) * scale)
            layer.beta_bias.copy_(torch.randn(layer.beta_bias.shape, generator=g))


def token_ids(batch: int, length: int, seed: int = 0, vocab: int = 320) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
