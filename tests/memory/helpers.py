"""Helpers for the memory tests: adapters strong enough that memory visibly matters."""

from __future__ import annotations

import json

import torch

import memory
from memory.adapter_io import OFFICIAL_CONFIG_NAME, OFFICIAL_WEIGHTS_NAME


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


def write_official(directory, mem, config=None, extra_tensors=None):
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model.layers.{i}.self_attn.{name.split('.', 2)[2]}": t.clone().to(torch.bfloat16).float()
        for name, t in mem.adapter_state_dict().items()
        for i in [int(name.split(".")[1])]
    }
    for i, _ in enumerate(mem.layers):  # inactive with delta_heads = (q, o): zero, and ignored
        tensors[f"model.layers.{i}.self_attn.delta_k_proj"] = torch.zeros(32, 8)
        tensors[f"model.layers.{i}.self_attn.delta_v_proj"] = torch.zeros(32, 8)
    tensors.update(extra_tensors or {})
    torch.save(tensors, directory / OFFICIAL_WEIGHTS_NAME)
    settings = {
        "rank": 8,
        "alpha": 16.0,
        "num_state_heads": 1,
        "memory_write_granularity": "token",
        "couple_lambda": True,
        "normalize_qk": True,
        "state_update_mode": "standard",
        "rankwise_gates": True,
        "memory_readout_mode": "delta",
        "delta_heads": ["q", "o"],
        **(config or {}),
    }
    (directory / OFFICIAL_CONFIG_NAME).write_text(json.dumps(settings))
    return directory


def written_logits(model, mem, store="edits"):
    with torch.no_grad():
        with mem.writing(store=store):
            model(input_ids=token_ids(1, 24, seed=1))
        return model(input_ids=token_ids(1, 11, seed=2)).logits
