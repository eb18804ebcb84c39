"""The engine: a causal LM with δ-mem attached, loaded once, generating greedily.

Loading takes the backbone from ``backbone`` (the model and tokenizer found, checked and
put on a device with its quantization), attaches δ-mem with the adapter the settings or a
workspace name, and turns the failures a user meets into ``EngineError`` messages that say
what to do. Generation is a plain greedy loop over the KV cache that checks a stop flag
between decoding steps, so a caller can cancel it within one step. How an adapter is read,
checked and fingerprinted is ``adapters``; the options and the error are ``options``
(torch-free), re-exported here. Imported only in the background: it loads torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import memory
from dmem_lsp.runtime.adapters import (
    LoadedAdapter,
    adapter_key,
    attach_named,
    check_prompt,
    clone,
    fingerprint_of,
    load_named,
)
from dmem_lsp.runtime.backbone import load_backbone
from dmem_lsp.runtime.fingerprint import Fingerprint
from dmem_lsp.runtime.options import DEFAULT_ADAPTER, DEFAULT_MODEL, EngineError, EngineOptions
from dmem_lsp.runtime.prompts import recorded_shape
from dmem_lsp.workspace.config import AdapterSource

__all__ = ["Engine", "EngineError", "EngineOptions", "Generation", "LoadedAdapter", "DEFAULT_MODEL", "DEFAULT_ADAPTER"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    cancelled: bool
    """True when the stop flag ended generation early."""


class Engine:
    """A loaded model, its tokenizer and its δ-mem."""

    def __init__(
        self,
        model,
        tokenizer,
        mem: memory.Memory,
        device: torch.device,
        quantization: str = "none",
        model_id: str = "",
        source: AdapterSource | None = None,
        prompt: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.memory = mem
        self.device = device
        self.quantization = quantization
        """nf4 or none: what the backbone's linear layers hold."""
        self.model_id = model_id
        self.default_adapter: AdapterSource | None = None
        """The settings' adapter, for folders that name none (None: a fresh one)."""
        self.refused: dict[tuple | None, str] = {}
        """Adapters that could not be loaded, and why (asked again, they are refused again)."""
        self._fresh: dict[str, torch.Tensor] | None = None
        tensors = clone(mem.adapter_state_dict())
        attached = LoadedAdapter(source, tensors, fingerprint_of(mem, model_id, tensors), prompt)
        self._adapters: dict[tuple | None, LoadedAdapter] = {adapter_key(source): attached}
        self.active = attached
        """The adapter whose weights δ-mem holds now."""

    @property
    def fingerprint(self) -> Fingerprint:
        """What memory states written now are bound to: backbone, adapter sha256, config."""
        return self.active.fingerprint

    def adapter(self, source: AdapterSource | None) -> LoadedAdapter:
        """The adapter ``source`` names (None: the settings' one), loaded once. Worker only.

        It must fit the backbone and have the attached δ-mem's configuration (rank, heads,
        write strategy), since its weights are swapped into the same layers; otherwise
        ``EngineError`` names both.
        """
        if source is None:
            source = self.default_adapter
        key = adapter_key(source)
        if key in self._adapters:
            return self._adapters[key]
        if key in self.refused:
            raise EngineError(self.refused[key])
        try:
            loaded = self._load_adapter(source)
        except EngineError as error:
            self.refused[key] = str(error)
            raise
        self._adapters[key] = loaded
        return loaded

    def use(self, adapter: LoadedAdapter) -> None:
        """Give δ-mem ``adapter``'s weights (a copy into the same parameters). Worker only."""
        if adapter is not self.active:
            self.memory.load_adapter_state_dict(adapter.tensors)
            self.active = adapter

    def _load_adapter(self, source: AdapterSource | None) -> LoadedAdapter:
        if source is None:  # the settings say none: the fresh adapter every start attaches
            if self._fresh is None:
                raise EngineError(
                    "no fresh adapter is available: this server attached another adapter's configuration first"
                )
            prompt = recorded_shape(None, self.model_id)[0]
            return LoadedAdapter(None, self._fresh, fingerprint_of(self.memory, self.model_id, self._fresh), prompt)
        return load_named(self.memory, self.tokenizer, self.model_id, source)

    @classmethod
    def load(
        cls,
        options: EngineOptions,
        progress: Callable[[str], None] = lambda message: None,
        device: torch.device | None = None,
        prefer: AdapterSource | None = None,
    ) -> Engine:
        """Load the model and its adapter; ``progress`` hears each stage as it starts.

        ``device`` overrides ``options.device`` with one exact device (a training process
        under ``accelerate launch`` loads onto its own GPU). ``prefer`` is an adapter a
        workspace names: attached first, so its configuration is the one loaded; if it
        cannot be used, that is kept in ``refused`` and the settings' adapter is attached.
        """
        model, tokenizer, device, quantization = load_backbone(options, progress, device)
        progress("attaching δ-mem")
        default = None if options.adapter is None else AdapterSource(options.adapter)
        fresh, refused, meta = None, {}, None
        attached: AdapterSource | None
        try:
            if options.adapter is None:
                with torch.random.fork_rng(devices=[]):  # the same fresh adapter every start
                    torch.manual_seed(0)
                    mem = memory.attach(model, memory.DeltaMemConfig())
                fresh = clone(mem.adapter_state_dict())
            if prefer is not None:
                try:
                    if options.adapter is None:
                        mem.detach()
                    mem, meta = attach_named(model, prefer, options.model)
                    attached = prefer
                except (EngineError, memory.AdapterError) as error:
                    message = (
                        f"{error} (named by {prefer.origin})" if isinstance(error, memory.AdapterError) else str(error)
                    )
                    refused[adapter_key(prefer)] = message
                    log.warning("%s", message)
                    if options.adapter is None:
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(0)
                            mem = memory.attach(model, memory.DeltaMemConfig())
                    prefer = None
            if prefer is None:
                attached = default
                if default is not None:
                    mem, meta = attach_named(model, default, options.model)
        except memory.AttachError as error:
            raise EngineError(
                f"δ-mem cannot attach to {options.model}: {error}. Use a model of a supported architecture "
                f"({', '.join(sorted(memory.TESTED_MODEL_TYPES))}) with --model"
            ) from error
        except memory.AdapterError as error:
            raise EngineError(f"{error} (choose another --adapter, or --adapter none)") from error
        log.info(
            "loaded %s on %s (%s, %d CPU threads) with a δ-mem adapter",
            options.model,
            device,
            quantization,
            torch.get_num_threads(),
        )
        prompt = recorded_shape(meta, options.model)[0]
        check_prompt(tokenizer, prompt, attached)
        engine = cls(model, tokenizer, mem, device, quantization, options.model, attached, prompt)
        engine.default_adapter, engine._fresh, engine.refused = default, fresh, refused
        return engine

    def generate(
        self,
        input_ids: Sequence[int],
        *,
        max_new_tokens: int,
        stop: Sequence[str] = (),
        should_stop: Callable[[], bool] = lambda: False,
        on_token: Callable[[int], None] = lambda count: None,
    ) -> Generation:
        """Greedy decoding over the KV cache; ``should_stop`` is checked before every step.

        Stops at the end-of-sequence token, at the first stop string (cut off), after
        ``max_new_tokens``, or when ``should_stop()`` turns true (``cancelled``).
        """
        from transformers import DynamicCache  # imported by load() already

        eos = set(_as_list(self.tokenizer.eos_token_id)) | set(
            _as_list(getattr(self.model.generation_config, "eos_token_id", None))
        )
        produced: list[int] = []
        text = ""
        with torch.inference_mode():
            ids = torch.tensor([list(input_ids)], device=self.device)
            cache = DynamicCache(config=self.model.config)  # the KV cache, grown in place by every step
            for _ in range(max_new_tokens):
                if should_stop():
                    return Generation(text, produced, cancelled=True)
                out = self.model(input_ids=ids, cache=cache, use_cache=True)
                token = int(out.logits[0, -1].argmax())
                if token in eos:
                    break
                produced.append(token)
                on_token(len(produced))
                text = self.tokenizer.decode(produced, skip_special_tokens=True)
                cut = min((text.find(s) for s in stop if s and s in text), default=-1)
                if cut >= 0:
                    return Generation(text[:cut], produced, cancelled=False)
                ids = torch.tensor([[token]], device=self.device)
        return Generation(text, produced, cancelled=False)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [int(value)]
