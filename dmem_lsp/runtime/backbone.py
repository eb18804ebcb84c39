"""The backbone: the causal LM and its tokenizer, found, checked and loaded on a device.

``load_backbone`` resolves ``--model`` (a hub id or a local directory) through the same
``from_pretrained`` path, picks the device and the quantization (NF4 on CUDA unless told
otherwise), refuses a tokenizer no prompt can be built with, and turns the failures a user
meets (no CUDA, no bitsandbytes, out of memory, unreadable files) into ``EngineError``
messages that say what to do. δ-mem is attached afterwards, by the engine. Imports torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dmem_lsp.runtime.locations import resolve_local
from dmem_lsp.runtime.options import EngineError, EngineOptions

__all__ = ["load_backbone"]


def load_backbone(
    options: EngineOptions, progress: Callable[[str], None], device: torch.device | None = None
) -> tuple[Any, Any, torch.device, str]:
    """(model, tokenizer, device, quantization): the model in eval mode on ``device``.

    ``device`` overrides ``options.device`` with one exact device; ``quantization`` is what
    the backbone's linear layers hold (``nf4`` or ``none``).
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
    return model, tokenizer, device, quantization


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
