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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

import memory

from .settings import DEFAULT_ADAPTER, DEFAULT_MODEL

__all__ = ["Engine", "EngineError", "EngineOptions", "Generation", "DEFAULT_MODEL", "DEFAULT_ADAPTER"]

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """A failure to load or run the model, with a message a user can act on."""


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

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device must be auto, cuda or cpu, not {self.device!r}")
        if self.quantization not in (None, "nf4", "none"):
            raise ValueError(f"quantization must be nf4 or none, not {self.quantization!r}")


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]
    cancelled: bool
    """True when the stop flag ended generation early."""


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else that names a file system path."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name or bool(Path(name).drive)


def _resolve_local(name: str, what: str, flag: str) -> str:
    """A directory as is; a hub id through the local cache (downloads allowed unless offline)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name):
        raise EngineError(
            f"the {what} directory {name} does not exist: pass an existing directory or a Hugging Face id with {flag}"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name)
    except Exception as error:  # offline, not found, no permission: the same advice
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise EngineError(
            f"cannot find the {what} {name!r}"
            + (" (HF_HUB_OFFLINE=1 is set)" if offline else "")
            + f": pass a local directory with {flag} PATH, or download it once with network access. ({error})"
        ) from error


class Engine:
    """A loaded model, its tokenizer and its δ-mem."""

    def __init__(
        self, model, tokenizer, mem: memory.Memory, device: torch.device, quantization: str = "none", model_id: str = ""
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.memory = mem
        self.device = device
        self.quantization = quantization
        """nf4 or none: what the backbone's linear layers hold."""
        self.fingerprint = _fingerprint(mem, model_id)
        """What saved memory states must have been made with: backbone, adapter sha256, config."""

    @classmethod
    def load(
        cls,
        options: EngineOptions,
        progress: Callable[[str], None] = lambda message: None,
        device: torch.device | None = None,
    ) -> "Engine":
        """Load the model and its adapter; ``progress`` hears each stage as it starts.

        ``device`` overrides ``options.device`` with one exact device (a training process
        under ``accelerate launch`` loads onto its own GPU).
        """
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
            progress(f"loading the model on {device.type} ({'NF4' if quantization == 'nf4' else 'full precision'})")
            model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        except torch.cuda.OutOfMemoryError as error:
            raise EngineError(
                "CUDA ran out of memory loading the model: use --quantization nf4, or a smaller --model"
            ) from error
        except (OSError, ValueError) as error:
            raise EngineError(f"cannot load the model from {model_dir}: {error}") from error
        if "device_map" not in kwargs:
            model.to(device)
        model.eval()
        progress("attaching δ-mem")
        try:
            if options.adapter is None:
                with torch.random.fork_rng(devices=[]):  # the same fresh adapter every start
                    torch.manual_seed(0)
                    mem = memory.attach(model, memory.DeltaMemConfig())
            else:
                mem = memory.load_adapter(model, _resolve_local(options.adapter, "adapter", "--adapter"))
        except memory.AttachError as error:
            raise EngineError(
                f"δ-mem cannot attach to {options.model}: {error}. Use a model of a supported architecture "
                f"({', '.join(sorted(memory.TESTED_MODEL_TYPES))}) with --model"
            ) from error
        except memory.AdapterError as error:
            raise EngineError(f"{error} (choose another --adapter, or --adapter none)") from error
        log.info("loaded %s on %s (%s) with a δ-mem adapter", options.model, device, quantization)
        return cls(model, tokenizer, mem, device, quantization, options.model)

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
        eos = set(_as_list(self.tokenizer.eos_token_id)) | set(_as_list(getattr(self.model.generation_config, "eos_token_id", None)))
        produced: list[int] = []
        text = ""
        with torch.inference_mode():
            ids = torch.tensor([list(input_ids)], device=self.device)
            cache = None
            for _ in range(max_new_tokens):
                if should_stop():
                    return Generation(text, produced, cancelled=True)
                out = self.model(input_ids=ids, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
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


def _fingerprint(mem: memory.Memory, model_id: str) -> dict:
    digest = hashlib.sha256()
    for name, tensor in sorted(mem.adapter_state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    config = mem.config.to_dict()
    config.pop("chunk_size", None)  # how the scan is computed, not what it computes
    backbone = {"id": model_id, **memory.adapter_io.base_shapes(mem)}
    return {"backbone": backbone, "adapter_sha256": digest.hexdigest(), "config": config}


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
