"""δ-mem: an online r×r memory inside every attention layer, updated by a gated delta rule.

    import memory
    mem = memory.attach(model, memory.DeltaMemConfig(rank=8))
    with mem.writing(store="edits"):
        model(input_ids=ids)          # a write pass
    model(input_ids=ids)              # a read-only pass: reads every store, changes none

Training an adapter (episodes: write the history, then read the answer with it absent) is
in ``memory.training``, its data in ``memory.episodes``; neither is imported here.

Knows torch and transformers; never imports the language server.
"""

from .adapter_io import AdapterError, load_adapter, read_adapter, save_adapter
from .config import DEFAULT_STORES, DeltaMemConfig
from .delta_rule import delta_rule_chunked, delta_rule_naive, delta_rule_step
from .layer import DeltaMemLayer
from .model import TESTED_MODEL_TYPES, AttachError, Memory, attach

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
