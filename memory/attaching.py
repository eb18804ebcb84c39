"""Attaching δ-mem to a Hugging Face causal LM: finding its attention blocks, building the layers.

``attach`` finds every attention block with ``q_proj`` and ``o_proj`` (Qwen3, Qwen2,
Llama, Mistral, SmolLM3 and their relatives), adds a ``DeltaMemLayer`` to it as
``self_attn.delta_mem`` and hands blocks and layers to ``Memory`` (``memory.model``),
which wraps the two projections:

    q_proj(x) + s · o W_dqᵀ        o_proj(·) + s · o W_doᵀ

where o are the reads of the layer's input x (the tensor q_proj receives). K and V are
untouched, so the KV cache holds exactly the base model's keys and values.
``attention_blocks`` is also how an adapter's shapes are read off a model
(``memory.backbone.model_shapes``).
"""

from __future__ import annotations

import logging
from typing import cast

import torch.nn as nn

from .config import DeltaMemConfig
from .layer import DeltaMemLayer, base_weight
from .model import Memory
from .wrappers import MemoryLinear

__all__ = ["attach", "attention_blocks", "AttachError", "TESTED_MODEL_TYPES"]

log = logging.getLogger(__name__)

TESTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral", "smollm3")


class AttachError(ValueError):
    """δ-mem cannot be attached to this model."""


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """Every attention block of ``model`` with separate ``q_proj`` and ``o_proj`` modules, in
    order (with δ-mem attached or not); AttachError when there are none."""
    blocks = [
        module
        for module in model.modules()
        if isinstance(getattr(module, "q_proj", None), nn.Module)
        and isinstance(getattr(module, "o_proj", None), nn.Module)
    ]
    if not blocks:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise AttachError(
            f"δ-mem cannot attach to {model_type!r}: it needs attention blocks with separate q_proj and "
            f"o_proj projections (tested: {', '.join(TESTED_MODEL_TYPES)})"
        )
    return blocks


def _unattached_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = attention_blocks(model)
    if any(isinstance(block.q_proj, MemoryLinear) for block in blocks):
        raise AttachError("δ-mem is already attached to this model")
    return blocks


def attach(model: nn.Module, config: DeltaMemConfig | None = None) -> Memory:
    """Attach freshly initialised δ-mem to ``model``; states start at zero.

    With zero states the model's outputs are the base model's, bit for bit. On the meta
    device (counting parameters without weights) the parameters are left uninitialised.
    """
    config = config or DeltaMemConfig()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TESTED_MODEL_TYPES:
        log.warning("δ-mem has not been tested with model type %r; attaching anyway", model_type)
    blocks = _unattached_blocks(model)
    layers = []
    for index, block in enumerate(blocks):
        q_proj, o_proj = cast(nn.Linear, block.q_proj), cast(nn.Linear, block.o_proj)  # or bitsandbytes' subclass
        device = q_proj.weight.device
        layer = DeltaMemLayer(index, q_proj.in_features, q_proj.out_features, o_proj.out_features, config, device)
        if device.type != "meta":
            layer.reset_parameters(base_weight(q_proj), base_weight(o_proj))
        layers.append(layer)
    return Memory(model, config, blocks, layers)
