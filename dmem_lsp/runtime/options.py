"""What the engine is asked to load, and how it says it cannot.

``EngineOptions`` (the model, the adapter, the device, the quantization, the threads) with
the defaults that the settings, the terminal commands and the engine share, and
``EngineError``, the failure a user can act on. Torch-free: the settings build options, and
the terminal commands name the defaults, without loading the engine. Imports nothing of
this package, so every module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_ADAPTER", "DEFAULT_MODEL", "EngineError", "EngineOptions"]

DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
DEFAULT_ADAPTER = "declare-lab/delta-mem_qwen3_4b-instruct"


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
