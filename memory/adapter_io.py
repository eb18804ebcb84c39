"""Adapter files: ours (safetensors + sorted JSON) and the official release's (read only).

Ours, a directory:
    adapter_config.json   sorted keys: format_version, delta_mem (the config), base_model
                          (id, revision, model type and the shapes the adapter was built
                          for), parameters, weights_sha256, and config_sha256: the sha256
                          of every other key (weights_sha256 included), so alpha, the
                          write strategy or the base model cannot change unseen
    adapter.safetensors   tensors named ``layers.{i}.{parameter}``

format_version 1 (before config_sha256) is still read: its weights are checked, its config
cannot be, and a warning says so (``dmem-lsp adapter export`` writes it as version 2).

The official release, a directory:
    delta_mem_config.json  rank, alpha, num_state_heads, memory_write_granularity, ...
    delta_mem_adapter.pt   torch.save of ``model.layers.{i}.self_attn.{parameter}``; read
                           with ``weights_only=True`` and nothing else is ever unpickled.

Files are written atomically (``memory.files.atomic_write``). Which backbone an adapter
fits, and ``AdapterError``, are in ``memory.backbone``; their names are imported here too,
so ``from memory.adapter_io import AdapterError`` (and ``base_shapes``, ``shapes_of``,
``check_backbone`` ...) keeps working.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn as nn

from .attaching import attach
from .backbone import AdapterError, BackboneShapes, base_shapes, check_backbone, model_shapes, shapes_of
from .config import DeltaMemConfig
from .files import atomic_write
from .model import Memory

__all__ = [
    "save_adapter",
    "write_adapter",
    "shapes_of",
    "load_adapter",
    "read_adapter",
    "base_shapes",
    "BackboneShapes",
    "model_shapes",
    "check_backbone",
    "AdapterError",
    "FORMAT_VERSION",
    "config_sha256",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "OFFICIAL_CONFIG_NAME",
    "OFFICIAL_WEIGHTS_NAME",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"
OFFICIAL_CONFIG_NAME = "delta_mem_config.json"
OFFICIAL_WEIGHTS_NAME = "delta_mem_adapter.pt"

log = logging.getLogger(__name__)

_OFFICIAL_KEY = re.compile(r"^(?:.*\.)?layers\.(\d+)\.self_attn\.(\w+)$")
# Present in official files but inactive when delta_heads is ("q", "o"): K and V stay untouched.
_OFFICIAL_INACTIVE = {"delta_k_proj", "delta_v_proj"}


def save_adapter(
    memory: Memory,
    path: str | os.PathLike,
    *,
    base_model_id: str | None = None,
    base_model_revision: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save the adapter weights and config in our format; returns the directory."""
    model_config = getattr(memory.model, "config", None)
    base_model = {
        "id": base_model_id or getattr(model_config, "_name_or_path", None) or None,
        "revision": base_model_revision or getattr(model_config, "_commit_hash", None),
        "model_type": getattr(model_config, "model_type", None),
        **base_shapes(memory),
    }
    return write_adapter(path, memory.config, memory.adapter_state_dict(), base_model, extra)


def write_adapter(
    path: str | os.PathLike,
    config: DeltaMemConfig,
    tensors: dict[str, torch.Tensor],
    base_model: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``tensors`` (named ``layers.{i}.{parameter}``, stored as float32) in our format.

    ``base_model`` holds the backbone's id, revision, model type and shapes (``base_shapes``);
    ``extra`` adds top-level keys to the config (a training summary). Returns the directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    weights = safetensors.torch.save(tensors, metadata={"format": "dmem-lsp-adapter"})
    atomic_write(path / WEIGHTS_NAME, weights)
    meta = {
        "format_version": FORMAT_VERSION,
        "delta_mem": config.to_dict(),
        "base_model": base_model,
        "parameters": sum(t.numel() for t in tensors.values()),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        **(extra or {}),
    }
    meta["config_sha256"] = config_sha256(meta)
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write(path / CONFIG_NAME, text.encode())
    return path


def read_adapter(path: str | os.PathLike) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read an adapter directory in either format, checking its integrity.

    Returns (config, tensors named ``layers.{i}.{parameter}``, metadata). Our format's
    weights must match the sha256 in its config; the official format's names and shapes
    are checked when the tensors are loaded into a model.
    """
    path = Path(path)
    if (path / CONFIG_NAME).is_file():
        return _read_ours(path)
    if (path / OFFICIAL_CONFIG_NAME).is_file():
        return _read_official(path)
    if not path.exists():
        raise AdapterError(f"no adapter at {path}: the directory does not exist")
    raise AdapterError(
        f"no adapter at {path}: expected {CONFIG_NAME} + {WEIGHTS_NAME} (dmem-lsp) "
        f"or {OFFICIAL_CONFIG_NAME} + {OFFICIAL_WEIGHTS_NAME} (the official release)"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise AdapterError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    return data


def config_sha256(meta: dict[str, Any]) -> str:
    """sha256 of an adapter config's canonical JSON, less ``config_sha256`` itself."""
    rest = {key: value for key, value in meta.items() if key != "config_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_ours(path: Path) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    meta = _read_json(path / CONFIG_NAME)
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise AdapterError(
            f"{path / CONFIG_NAME}: format_version {version!r} is not supported (this dmem-lsp reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    if version == 1:
        log.warning(
            "%s: format_version 1 has no config_sha256, so its config (alpha, write strategy, base model) is not "
            "verified; `dmem-lsp adapter export` writes it again as version %d", path / CONFIG_NAME, FORMAT_VERSION
        )
    elif meta.get("config_sha256") != config_sha256(meta):
        raise AdapterError(
            f"{path / CONFIG_NAME} does not match its config_sha256: its settings (delta_mem, base_model, ...) "
            "were changed after it was saved; re-export the adapter"
        )
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterError(f"{weights} is missing")
    data = weights.read_bytes()  # read once: hashed, then parsed
    expected = meta.get("weights_sha256")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise AdapterError(
            f"{weights} does not match its config (sha256 {actual[:12]}…, config says {str(expected)[:12]}…): "
            "the file is truncated or was modified; re-export the adapter"
        )
    try:
        config = DeltaMemConfig.from_dict(meta["delta_mem"])
        tensors = safetensors.torch.load(data)
    except (KeyError, TypeError, ValueError) as error:
        raise AdapterError(f"{path}: {error}") from error
    return config, tensors, meta


def official_config(data: dict[str, Any]) -> DeltaMemConfig:
    """Our config for an official ``delta_mem_config.json``; unsupported settings are refused by name."""
    unsupported = []
    required = {
        "couple_lambda": True,
        "normalize_qk": True,
        "rankwise_gates": True,
        "state_update_mode": "standard",
        "memory_readout_mode": "delta",
    }
    for key, value in required.items():
        if key in data and data[key] != value:
            unsupported.append(f"{key}={data[key]!r} (supported: {value!r})")
    heads = data.get("delta_heads", ["q", "o"])
    if sorted(heads) != ["o", "q"]:
        unsupported.append(f"delta_heads={list(heads)!r} (supported: ['q', 'o'])")
    granularity = data.get("memory_write_granularity", "token")
    writes = {"token": "token", "message_mean": "segment", "sentence_mean": "segment"}
    if granularity not in writes:
        unsupported.append(f"memory_write_granularity={granularity!r} (supported: {', '.join(writes)})")
    if unsupported:
        raise AdapterError("unsupported δ-mem settings in the official config: " + "; ".join(unsupported))
    try:
        return DeltaMemConfig(
            rank=int(data.get("rank", 8)),
            alpha=float(data.get("alpha", 16.0)),
            state_heads=int(data.get("num_state_heads", 1)),
            write=writes[granularity],
        )
    except (TypeError, ValueError) as error:
        raise AdapterError(f"official config: {error}") from error


def _read_official(path: Path) -> tuple[DeltaMemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    data = _read_json(path / OFFICIAL_CONFIG_NAME)
    config = official_config(data)
    weights = path / OFFICIAL_WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterError(f"{weights} is missing")
    try:
        raw = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses anything but tensors and plain containers
        raise AdapterError(f"cannot read {weights} as tensors only: {error}") from error
    if not isinstance(raw, dict) or not all(isinstance(t, torch.Tensor) for t in raw.values()):
        raise AdapterError(f"{weights} must hold a dict of tensors")
    tensors, unknown = {}, []
    for key, tensor in raw.items():
        match = _OFFICIAL_KEY.match(str(key))
        if match is None:
            unknown.append(str(key))
        elif match.group(2) not in _OFFICIAL_INACTIVE:
            tensors[f"layers.{int(match.group(1))}.{match.group(2)}"] = tensor
    if unknown:
        raise AdapterError(f"{weights}: unexpected keys {sorted(unknown)[:8]}")
    return config, tensors, {"format": "official", "config": data}


def load_adapter(model: nn.Module, path: str | os.PathLike, **overrides: Any) -> Memory:
    """Attach δ-mem to ``model`` with the adapter at ``path`` (either format).

    ``overrides`` change runtime settings that are not part of the weights (``stores``,
    ``chunk_size``). An adapter built for another backbone is refused, naming both shapes.
    """
    config, tensors, meta = read_adapter(path)
    runtime = {key: overrides.pop(key) for key in ("stores", "chunk_size") if key in overrides}
    if overrides:
        raise TypeError(f"unexpected overrides: {', '.join(sorted(overrides))}")
    config = config.replace(**runtime)
    memory = attach(model, config)
    try:
        check_backbone(path, meta, model)
    except AdapterError:
        memory.detach()
        raise
    try:
        memory.load_adapter_state_dict(tensors)
    except ValueError as error:
        memory.detach()
        raise AdapterError(f"{path}: {error}") from error
    return memory
