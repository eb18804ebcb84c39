"""The engine: a causal LM with δ-mem attached, loaded once, generating greedily.

Loading resolves the model and adapter through the same ``from_pretrained`` path for a hub
id and a local directory, picks the device and quantization, and turns the failures a
user meets into ``EngineError`` messages that say what to do. Generation is a plain greedy
loop over the KV cache that checks a stop flag between decoding steps, so a caller can
cancel it within one step. How an adapter is read, checked and fingerprinted is
``adapters``; the options and the error are ``options`` (torch-free), re-exported here.
Imported only in the background: it loads torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
from dmem_lsp.runtime.fingerprint import Fingerprint
from dmem_lsp.runtime.locations import resolve_local
from dmem_lsp.runtime.options import DEFAULT_ADAPTER, DEFAULT_MODEL, EngineError, EngineOptions
from dmem_lsp.runtime.prompts import recorded_shape
from dmem_lsp.workspace.config import AdapterSource

__all__ = ["Engine", "EngineError", "EngineOptions", "Generation", "LoadedAdapter", "DEFAULT_MODEL", "DEFAULT_ADAPTER"]

log = logging.getLogger(__name__)


def _check_tokenizer(tokenizer: Any, model_dir: Any) -> None:
    """Refuse a tokenizer the server cannot build prompts with.

    ``AutoTokenizer`` returns an empty tokenizer for a directory without tokenizer files;
    served as it is, every write would be 0 tokens and every completion would fail."""
    from dmem_lsp.runtime.prompts import FIM_TOKENS

    if not tokenizer.encode("def f(x):\n    return x", add_special_tokens=False):
        raise EngineError(
            f"the model at {model_dir} has no usable tokenizer (it encodes text as no tokens): save the "
            "tokenizer beside the weights (tokenizer.save_pretrained) and load them from one directory"
        )
    vocab = tokenizer.get_vocab()
    if not getattr(tokenizer, "chat_template", None) and not all(token in vocab for token in FIM_TOKENS):
        raise EngineError(
            f"the tokenizer of {model_dir} has neither a chat template nor fill-in-the-middle tokens "
            f"({', '.join(FIM_TOKENS)}), so no prompt can be built for it"
        )


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
        if options.threads is not None:
            torch.set_num_threads(options.threads)
        progress("importing transformers")
        import transformers

        cuda = torch.cuda.is_available()
        if options.device == "cuda" and not cuda:
            raise EngineError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        if device is None:
            device = torch.device("cuda" if options.device in ("auto", "cuda") and cuda else "cpu")
        quantization = options.quantization or ("nf4" if device.type == "cuda" else "none")
        if quantization == "nf4":
            _check_bitsandbytes(device)
        progress(f"finding {options.model}")
        model_dir = resolve_local(options.model, "model", "--model")
        kwargs: dict = {"dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}
        if quantization == "nf4":
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"]
            )
            kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else "cpu"
        try:
            progress("loading the tokenizer")
            tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
            _check_tokenizer(tokenizer, model_dir)
            progress(f"loading the model on {device.type} ({'NF4' if quantization == 'nf4' else 'full precision'})")
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        except torch.cuda.OutOfMemoryError as error:
            raise EngineError(
                "CUDA ran out of memory loading the model: use --quantization nf4, or a smaller --model"
            ) from error
        except (OSError, ValueError) as error:
            raise EngineError(f"cannot load the model from {model_dir}: {error}") from error
        if "device_map" not in kwargs:
            model.to(device)  # type: ignore[arg-type]  # transformers' wrapped .to() is typed without its self
        model.eval()
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


def _check_bitsandbytes(device: torch.device) -> None:
    """NF4 needs bitsandbytes, and on CUDA a build of it with CUDA kernels."""
    try:
        import bitsandbytes
    except Exception as error:  # not installed, or its native library fails to load
        raise EngineError(
            f"NF4 needs bitsandbytes, which cannot be imported ({error}): pip install bitsandbytes, "
            "or use --quantization none"
        ) from error
    if device.type == "cuda":
        if getattr(bitsandbytes.cextension, "BNB_BACKEND", "CUDA") not in ("CUDA", "ROCm"):
            raise EngineError(
                "this bitsandbytes has no CUDA support, so NF4 cannot run on the GPU: install a CUDA build "
                "of bitsandbytes, or use --quantization none (more GPU memory) or --device cpu"
            )


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [int(value)]
