"""δ-mem adapters as the engine serves them: one fit check, one fingerprint.

An adapter a folder or the settings name is read from its directory, checked once against
the backbone (``memory.backbone.check_backbone``, where two different hub ids also decide)
and against the δ-mem the engine attached first (the same configuration, since its weights
are swapped into the same layers), and against the tokenizer (an adapter trained on FIM
prompts needs FIM tokens). What passes is a ``LoadedAdapter``: its tensors on the model's
device and the ``Fingerprint`` that memory states written with it are bound to. Every
failure is an ``EngineError`` naming the adapter and who named it. Imports torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

import memory
from dmem_lsp.runtime.fingerprint import Backbone, Fingerprint, make_fingerprint
from dmem_lsp.runtime.locations import looks_like_path, resolve_local
from dmem_lsp.runtime.options import EngineError
from dmem_lsp.runtime.prompts import prompt_shape, recorded_shape
from dmem_lsp.workspace.config import AdapterSource

__all__ = [
    "LoadedAdapter",
    "adapter_key",
    "attach_named",
    "check_backbone",
    "check_prompt",
    "clone",
    "comparable",
    "fingerprint_of",
    "load_named",
    "resolve_adapter",
    "tensors_sha256",
]


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter's weights, ready to be swapped into the attached δ-mem."""

    source: AdapterSource | None
    """Who named it; None: the adapter named by the settings (or a fresh one)."""
    tensors: dict[str, torch.Tensor]
    """On the model's device, named as ``Memory.adapter_state_dict``."""
    fingerprint: Fingerprint
    """What memory states written with it are bound to (``store`` checks it)."""
    prompt: str | None = None
    """The completion prompt shape it was trained on ("fim" | "chat"; ``prompts.recorded_shape``),
    None: the tokenizer decides (``prompts.prompt_shape``)."""


def adapter_key(source: AdapterSource | None) -> tuple | None:
    """What two names of one adapter share (None: the settings' adapter)."""
    return None if source is None else source.key


def clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def fingerprint_of(mem: memory.Memory, model_id: str, tensors: dict[str, torch.Tensor]) -> Fingerprint:
    """The fingerprint of states written by ``mem`` holding the adapter weights ``tensors``."""
    backbone = Backbone(id=model_id, model_type=_model_type(mem.model), **memory.backbone.base_shapes(mem))
    return make_fingerprint(backbone, tensors_sha256(tensors), mem.config.to_dict())


def _model_type(model: Any) -> str | None:
    """The backbone's architecture (``qwen3``, ``llama``): same shapes do not make the same model."""
    return getattr(getattr(model, "config", None), "model_type", None)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names and float32 bytes, in name order (``Fingerprint.adapter_sha256``)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def comparable(config: memory.DeltaMemConfig) -> dict:
    """What two adapters must share to swap weights in the same layers."""
    data = config.to_dict()
    for runtime in ("chunk_size", "stores"):
        data.pop(runtime, None)
    return data


def resolve_adapter(source: AdapterSource) -> str:
    """The directory of the adapter ``source`` names (``locations.resolve_local``)."""
    flag = "--adapter" if source.origin == AdapterSource("").origin else f"[adapter] in {source.origin}"
    return resolve_local(source.name, "adapter", flag, source.revision)


def check_prompt(tokenizer: Any, prompt: str | None, source: AdapterSource | None) -> None:
    """Refuse an adapter trained on FIM prompts for a tokenizer that has no FIM tokens."""
    if prompt == "fim" and prompt_shape(tokenizer) != "fim":
        raise EngineError(
            f"the adapter {source} was trained on fill-in-the-middle prompts, but this model's tokenizer has no "
            "FIM tokens: use an adapter trained for this model (dmem-lsp adapter train --prompt chat)"
        )


def check_backbone(
    source: AdapterSource, meta: dict, tensors: dict[str, torch.Tensor], model: Any, model_id: str
) -> None:
    """``memory.backbone.check_backbone``, where two different hub ids also decide: same-shaped
    models (a base and an instruct model) still differ in their weights."""
    base = meta["base_model"] if isinstance(meta.get("base_model"), dict) else {}
    theirs = str(base.get("id") or "")
    another = bool(theirs) and not looks_like_path(theirs) and not looks_like_path(model_id) and theirs != model_id
    memory.backbone.check_backbone(source, meta, model, tensors=tensors, model_id=model_id, another_model=another)


def attach_named(model: Any, source: AdapterSource, model_id: str) -> tuple[memory.Memory, dict]:
    """Attach δ-mem with the adapter ``source`` names, refusing one built for another backbone;
    (the memory, the adapter's metadata)."""
    directory = resolve_adapter(source)
    _config, tensors, meta = memory.read_adapter(directory)
    check_backbone(source, meta, tensors, model, model_id)
    return memory.load_adapter(model, directory), meta


def load_named(mem: memory.Memory, tokenizer: Any, model_id: str, source: AdapterSource) -> LoadedAdapter:
    """The adapter ``source`` names, read and checked for the attached ``mem``: it must fit the
    backbone, have ``mem``'s configuration and a prompt shape the tokenizer can build."""
    directory = resolve_adapter(source)
    try:
        config, tensors, meta = memory.read_adapter(directory)
        check_backbone(source, meta, tensors, mem.model, model_id)
    except memory.AdapterError as error:
        raise EngineError(f"{error} (named by {source.origin})") from error
    ours, theirs = comparable(mem.config), comparable(config)
    if ours != theirs:
        differ = ", ".join(
            f"{k} {theirs.get(k)!r} (loaded: {ours.get(k)!r})" for k in ours if ours.get(k) != theirs.get(k)
        )
        raise EngineError(
            f"the adapter {source} (named by {source.origin}) has another δ-mem configuration than the one "
            f"this server attached first: {differ}. Open this folder in its own editor window, or train "
            "the adapter with the same configuration"
        )
    problems = mem.adapter_problems(tensors)
    if problems:
        raise EngineError(
            f"the adapter {source} (named by {source.origin}) does not fit {model_id}: " + "; ".join(problems)
        )
    own = mem.adapter_state_dict()
    tensors = {name: tensors[name].to(own[name].device, torch.float32) for name in own}
    prompt = recorded_shape(meta, model_id)[0]
    check_prompt(tokenizer, prompt, source)
    return LoadedAdapter(source, tensors, fingerprint_of(mem, model_id, tensors), prompt)
