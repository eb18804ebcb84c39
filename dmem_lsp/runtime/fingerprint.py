"""What a memory state is bound to: the backbone, the adapter's weights and the δ-mem config.

A state written through one adapter on one backbone means nothing to another, so every
state file, manifest and snapshot carries the ``Fingerprint`` of the memory it came from,
and one made with another is kept aside (``store``) or refused (``snapshots``). On disk it
is the JSON object it always was (sorted keys); in Python it is that dict, typed here.
Torch-free: the terminal commands compare fingerprints without loading a model.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, TypedDict

__all__ = ["Backbone", "Fingerprint", "describe", "differences", "fingerprint_id", "make_fingerprint"]

FIELDS = ("backbone", "adapter_sha256", "config")


class Backbone(TypedDict, total=False):
    """The model a memory was written with (state files of format 1 have no ``model_type``)."""

    id: str
    """The ``--model`` the server ran: a hub id or a directory."""
    model_type: str | None
    """transformers' architecture name (``qwen3``): same shapes do not make the same model."""
    hidden_size: int
    num_layers: int
    q_proj_out: int
    o_proj_out: int


class Fingerprint(TypedDict):
    backbone: Backbone
    adapter_sha256: str
    """sha256 of the adapter's tensors (names and float32 bytes), as the engine holds them."""
    config: dict[str, Any]
    """The δ-mem config (``DeltaMemConfig.to_dict``) less ``chunk_size``, which changes how
    the scan is computed, not what it computes."""


def make_fingerprint(backbone: Backbone, adapter_sha256: str, config: dict[str, Any]) -> Fingerprint:
    return {
        "backbone": backbone,
        "adapter_sha256": adapter_sha256,
        "config": {key: value for key, value in config.items() if key != "chunk_size"},
    }


def fingerprint_id(fingerprint: Fingerprint | dict[str, Any]) -> str:
    """A short name for a fingerprint (where another adapter's state is kept)."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def differences(
    theirs: Fingerprint | dict[str, Any], mine: Fingerprint | dict[str, Any], legacy: bool = False
) -> list[str]:
    """The fields (``FIELDS``) in which ``theirs`` differs from ``mine``; ``legacy``: ``theirs``
    is from a format-1 state file, whose backbone names no model type."""
    differ = []
    for key in FIELDS:
        a, b = theirs.get(key), mine.get(key)
        if key == "backbone" and legacy and isinstance(a, dict) and isinstance(b, dict) and "model_type" not in a:
            b = {k: v for k, v in b.items() if k != "model_type"}
        if a != b:
            differ.append(key)
    return differ


def describe(fingerprint: Fingerprint | dict[str, Any]) -> str:
    """``backbone-id / adapter 0123456789ab``, for messages."""
    backbone = fingerprint.get("backbone")
    name = backbone.get("id") if isinstance(backbone, dict) else None
    return f"{name} / adapter {str(fingerprint.get('adapter_sha256'))[:12]}"
