"""The backbone an adapter is bound to: its shapes, and the one check that an adapter fits a model.

An adapter is made for one backbone: its hidden size, layer count and q/o projection widths
(``BackboneShapes``), and its model type. ``base_shapes`` reads them off attached δ-mem,
``model_shapes`` off a model (attached or not), ``shapes_of`` off an adapter's tensors; our
adapter config records them under ``base_model``. ``check_backbone`` is the one
adapter-fits-backbone check, for ``memory.adapter_io.load_adapter`` and the server's engine.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

import torch
import torch.nn as nn

from .attaching import attention_blocks
from .model import Memory

__all__ = ["AdapterError", "BackboneShapes", "base_shapes", "model_shapes", "shapes_of", "check_backbone"]


class AdapterError(ValueError):
    """An adapter that cannot be used: missing, tampered, or made for another model."""


class BackboneShapes(TypedDict):
    """The backbone shapes an adapter is bound to (its config's ``base_model`` records them)."""

    hidden_size: int
    num_layers: int
    q_proj_out: int
    """q_proj's output width (heads × head size)."""
    o_proj_out: int


def base_shapes(memory: Memory) -> BackboneShapes:
    """The backbone shapes an adapter is bound to: hidden size, layer count, q/o projection widths."""
    first = memory.layers[0]
    return {
        "hidden_size": first.memory_q_proj.shape[1],
        "num_layers": len(memory.layers),
        "q_proj_out": first.delta_q_proj.shape[0],
        "o_proj_out": first.delta_o_proj.shape[0],
    }


def model_shapes(model: nn.Module) -> BackboneShapes:
    """``base_shapes`` read off the model itself, δ-mem attached or not (AttachError: no attention blocks)."""
    blocks = attention_blocks(model)
    q_proj, o_proj = cast(nn.Linear, blocks[0].q_proj), cast(nn.Linear, blocks[0].o_proj)
    return {
        "hidden_size": q_proj.in_features,
        "num_layers": len(blocks),
        "q_proj_out": q_proj.out_features,
        "o_proj_out": o_proj.out_features,
    }


def check_backbone(
    name: object,
    meta: dict[str, Any],
    model: nn.Module,
    *,
    tensors: dict[str, torch.Tensor] | None = None,
    model_id: str | None = None,
    another_model: bool = False,
) -> None:
    """Refuse an adapter built for another backbone than ``model`` (AdapterError naming both).

    What the adapter was built for: the shapes of its ``tensors`` when given, else those its
    config's ``base_model`` records (none: the official release, nothing to check), and the
    model type recorded there. Shapes decide, and so does the model type (a Llama adapter on
    a same-shaped Qwen3).
    ``model_id`` names ``model`` in the message (a server's ``--model``); ``another_model``:
    the caller knows the two are different models (two hub ids: a base and an instruct model
    have the same shapes but not the same weights).
    """
    base: dict[str, Any] = meta["base_model"] if isinstance(meta.get("base_model"), dict) else {}
    if tensors is not None:
        claimed: dict[str, Any] = dict(shapes_of(tensors))
    elif base:
        claimed = base
    else:
        return
    ours: dict[str, Any] = dict(model_shapes(model))
    differ = [f"{k}: adapter {claimed.get(k)}, model {v}" for k, v in ours.items() if claimed.get(k) != v]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if base.get("model_type") and model_type and base["model_type"] != model_type:
        differ.insert(0, f"model type: adapter {base['model_type']}, model {model_type}")
    if another_model:
        differ.insert(0, "another model id")
    if differ:
        theirs = base.get("id") or "another backbone"
        runs = f"but this server runs {model_id}" if model_id else "not this model"
        raise AdapterError(f"the adapter {name} was built for {theirs}, {runs} (" + "; ".join(differ) + ")")


def shapes_of(tensors: dict[str, torch.Tensor]) -> BackboneShapes:
    """The backbone shapes an adapter's tensors were made for (``base_shapes`` without a model)."""
    try:
        layers = sorted({int(name.split(".")[1]) for name in tensors})
        first = f"layers.{layers[0]}."
        return {
            "hidden_size": int(tensors[first + "memory_q_proj"].shape[1]),
            "num_layers": len(layers),
            "q_proj_out": int(tensors[first + "delta_q_proj"].shape[0]),
            "o_proj_out": int(tensors[first + "delta_o_proj"].shape[0]),
        }
    except (IndexError, KeyError, ValueError) as error:
        raise AdapterError(f"the adapter's tensors are incomplete ({error!r})") from error
