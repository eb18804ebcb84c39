"""The engine: a causal LM with δ-mem attached, loaded once, generating greedily.

Loading resolves the model and adapter through the same ``from_pretrained`` path for a hub
id and a local directory, picks the device and quantization, and turns the failures a
user meets into ``EngineError`` messages that say what to do. Generation is a plain greedy
loop over the KV cache that checks a stop flag between decoding steps, so a caller can
cancel it within one step. Imported only in the background: it loads torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import memory
from dmem_lsp.runtime.fingerprint import Backbone, Fingerprint, make_fingerprint
from dmem_lsp.runtime.locations import is_hub_id, local_directory, looks_like_path, missing_directory
from dmem_lsp.runtime.prompts import prompt_shape, recorded_shape
from dmem_lsp.runtime.settings import DEFAULT_ADAPTER, DEFAULT_MODEL
from dmem_lsp.workspace.config import AdapterSource

__all__ = ["Engine", "EngineError", "EngineOptions", "Generation", "LoadedAdapter", "DEFAULT_MODEL", "DEFAULT_ADAPTER"]

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """A failure to load or run the model, with a message a user can act on."""


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
class EngineOptions:
    model: str = DEFAULT_MODEL
    """A Hugging Face model id or a local directory."""
    adapter: str | None = DEFAULT_ADAPTER
    """A δ-mem adapter: a Hugging Face repo id or a directory; None attaches a fresh one."""
    device: str = "auto"
    """auto (CUDA when available), cuda or cpu."""
    quantization: str | None = None
    """nf4 or none; None: NF4 on CUDA, full precision on the CPU."""
    threads: int | None = None
    """torch's intra-op threads, set on the thread that loads (the inference worker, which
    runs every job after); None leaves torch's default."""

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads!r}")
        if self.quantization not in (None, "nf4", "none"):
            raise ValueError(f"quantization must be nf4 or none, not {self.quantization!r}")


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    cancelled: bool
    """True when the stop flag ended generation early."""


def _resolve_local(name: str, what: str, flag: str, revision: str | None = None) -> str:
    """A directory as is; a hub id (at ``revision``) through the local cache (downloads allowed unless offline)."""
    directory = local_directory(name, revision)
    if directory is not None:
        return str(directory)
    if not is_hub_id(name, revision):
        raise EngineError(
            f"the {what} directory {name} {missing_directory(name)}: pass an existing directory or a Hugging Face id "
            f"with {flag}"
        )
    from huggingface_hub import snapshot_download

    from dmem_lsp.runtime.download import download_command

    try:
        return snapshot_download(name, revision=revision)
    except Exception as error:  # offline, not found, no permission: the same advice
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        at = f" at revision {revision!r}" if revision else ""
        fetch = download_command(**({"model": name} if what == "model" else {"adapter": name, "revision": revision}))
        raise EngineError(
            f"cannot find the {what} {name!r}{at}"
            + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
            + f": pass a local directory with {flag} PATH, or download it ahead of time with network access: "
            f"`{fetch}`. ({error})"
        ) from error


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
        tensors = _clone(mem.adapter_state_dict())
        attached = LoadedAdapter(source, tensors, _fingerprint(mem, model_id, tensors), prompt)
        self._adapters: dict[tuple | None, LoadedAdapter] = {_key(source): attached}
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
        key = _key(source)
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
            return LoadedAdapter(None, self._fresh, self._fingerprint_of(self._fresh), prompt)
        directory = _resolve_adapter(source)
        try:
            config, tensors, meta = memory.read_adapter(directory)
            _check_backbone(source, meta, tensors, self.model, self.model_id)
        except memory.AdapterError as error:
            raise EngineError(f"{error} (named by {source.origin})") from error
        ours, theirs = _comparable(self.memory.config), _comparable(config)
        if ours != theirs:
            differ = ", ".join(
                f"{k} {theirs.get(k)!r} (loaded: {ours.get(k)!r})" for k in ours if ours.get(k) != theirs.get(k)
            )
            raise EngineError(
                f"the adapter {source} (named by {source.origin}) has another δ-mem configuration than the one "
                f"this server attached first: {differ}. Open this folder in its own editor window, or train "
                "the adapter with the same configuration"
            )
        problems = self.memory.adapter_problems(tensors)
        if problems:
            raise EngineError(
                f"the adapter {source} (named by {source.origin}) does not fit {self.model_id}: " + "; ".join(problems)
            )
        own = self.memory.adapter_state_dict()
        tensors = {name: tensors[name].to(own[name].device, torch.float32) for name in own}
        prompt = recorded_shape(meta, self.model_id)[0]
        _check_prompt(self.tokenizer, prompt, source)
        return LoadedAdapter(source, tensors, self._fingerprint_of(tensors), prompt)

    def _fingerprint_of(self, tensors: dict[str, torch.Tensor]) -> Fingerprint:
        return _fingerprint(self.memory, self.model_id, tensors)

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
        model_dir = _resolve_local(options.model, "model", "--model")
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
                fresh = _clone(mem.adapter_state_dict())
            if prefer is not None:
                try:
                    if options.adapter is None:
                        mem.detach()
                    mem, meta = _attach_named(model, prefer, options.model)
                    attached = prefer
                except (EngineError, memory.AdapterError) as error:
                    message = (
                        f"{error} (named by {prefer.origin})" if isinstance(error, memory.AdapterError) else str(error)
                    )
                    refused[_key(prefer)] = message
                    log.warning("%s", message)
                    if options.adapter is None:
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(0)
                            mem = memory.attach(model, memory.DeltaMemConfig())
                    prefer = None
            if prefer is None:
                attached = default
                if default is not None:
                    mem, meta = _attach_named(model, default, options.model)
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
        _check_prompt(tokenizer, prompt, attached)
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


def _fingerprint(mem: memory.Memory, model_id: str, tensors: dict[str, torch.Tensor]) -> Fingerprint:
    """The fingerprint of states written by ``mem`` holding the adapter weights ``tensors``."""
    backbone = Backbone(id=model_id, model_type=_model_type(mem.model), **memory.adapter_io.base_shapes(mem))
    return make_fingerprint(backbone, _tensors_sha256(tensors), mem.config.to_dict())


def _model_type(model) -> str | None:
    """The backbone's architecture (``qwen3``, ``llama``): same shapes do not make the same model."""
    return getattr(getattr(model, "config", None), "model_type", None)


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _clone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def _key(source: AdapterSource | None) -> tuple | None:
    return None if source is None else source.key


def _comparable(config: memory.DeltaMemConfig) -> dict:
    """What two adapters must share to swap weights in the same layers."""
    data = config.to_dict()
    for runtime in ("chunk_size", "stores"):
        data.pop(runtime, None)
    return data


def _resolve_adapter(source: AdapterSource) -> str:
    flag = "--adapter" if source.origin == AdapterSource("").origin else f"[adapter] in {source.origin}"
    return _resolve_local(source.name, "adapter", flag, source.revision)


def _check_prompt(tokenizer, prompt: str | None, source: AdapterSource | None) -> None:
    """Refuse an adapter trained on FIM prompts for a tokenizer that has no FIM tokens."""
    if prompt == "fim" and prompt_shape(tokenizer) != "fim":
        raise EngineError(
            f"the adapter {source} was trained on fill-in-the-middle prompts, but this model's tokenizer has no "
            "FIM tokens: use an adapter trained for this model (dmem-lsp adapter train --prompt chat)"
        )


def _attach_named(model, source: AdapterSource, model_id: str) -> tuple[memory.Memory, dict]:
    """Attach δ-mem with the adapter ``source`` names, refusing one built for another backbone;
    (the memory, the adapter's metadata)."""
    directory = _resolve_adapter(source)
    _config, tensors, meta = memory.read_adapter(directory)
    _check_backbone(source, meta, tensors, model, model_id)
    return memory.load_adapter(model, directory), meta


def _check_backbone(source: AdapterSource, meta: dict, tensors: dict[str, torch.Tensor], model, model_id: str) -> None:
    """``memory.adapter_io.check_backbone``, where two different hub ids also decide: same-shaped
    models (a base and an instruct model) still differ in their weights."""
    base = meta["base_model"] if isinstance(meta.get("base_model"), dict) else {}
    theirs = str(base.get("id") or "")
    another = bool(theirs) and not looks_like_path(theirs) and not looks_like_path(model_id) and theirs != model_id
    memory.adapter_io.check_backbone(source, meta, model, tensors=tensors, model_id=model_id, another_model=another)


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
