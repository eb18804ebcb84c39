"""δ-mem: an online r×r memory inside every attention layer, updated by a gated delta rule.

    import memory
    mem = memory.attach(model, memory.DeltaMemConfig(rank=8))
    with mem.writing(store="edits"):
        model(input_ids=ids)          # a write pass
    model(input_ids=ids)              # a read-only pass: reads every store, changes none

Training an adapter (episodes: write the history, then read the answer with it absent) is
in ``memory.training``, its data in ``memory.episodes``; neither is imported here.

Knows torch and transformers; never imports the language server. The names below are
imported when first used, so ``memory.config`` (the configuration and the store names)
can be read without importing torch: the server's command line does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter_io import load_adapter, read_adapter, save_adapter
    from .attaching import TESTED_MODEL_TYPES, AttachError, attach
    from .backbone import AdapterError
    from .config import DEFAULT_STORES, DeltaMemConfig
    from .delta_rule import delta_rule_chunked, delta_rule_naive, delta_rule_step
    from .layer import DeltaMemLayer
    from .model import Memory

_WHERE = {
    "AdapterError": "backbone",
    "load_adapter": "adapter_io",
    "read_adapter": "adapter_io",
    "save_adapter": "adapter_io",
    "DEFAULT_STORES": "config",
    "DeltaMemConfig": "config",
    "delta_rule_chunked": "delta_rule",
    "delta_rule_naive": "delta_rule",
    "delta_rule_step": "delta_rule",
    "DeltaMemLayer": "layer",
    "TESTED_MODEL_TYPES": "attaching",
    "AttachError": "attaching",
    "Memory": "model",
    "attach": "attaching",
}

__all__ = [
    "AdapterError",
    "AttachError",
    "DEFAULT_STORES",
    "DeltaMemConfig",
    "DeltaMemLayer",
    "Memory",
    "TESTED_MODEL_TYPES",
    "attach",
    "delta_rule_chunked",
    "delta_rule_naive",
    "delta_rule_step",
    "load_adapter",
    "read_adapter",
    "save_adapter",
]


def __getattr__(name: str) -> Any:
    """``memory.attach``, ``memory.adapter_io`` ...: the name's module, imported on first use."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
