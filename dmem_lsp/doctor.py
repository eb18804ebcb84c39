"""``dmem-lsp doctor``: what a user needs to see when something is wrong.

Prints versions, whether torch sees CUDA and whether bitsandbytes can run NF4 there,
where the model and adapter would be loaded from (without downloading anything), and
where workspace memory is kept, the ``.dmem/config.toml`` of the current directory (or
the nearest folder above it), followed by hints for what looks wrong. Writes to
stdout; it is a terminal command, not the server.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .settings import parse_settings, torch_threads
from .store import memory_root

__all__ = ["run_doctor"]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _where(name: str, revision: str | None = None) -> tuple[str, bool]:
    """(where ``name`` would load from, whether it is there without a download)."""
    path = Path(name).expanduser()
    if path.is_dir() and revision is None:
        return f"local directory {path.resolve()}", True
    if path.exists() or name.startswith((".", "/", "~")):
        return f"{name} (not a directory)", False
    try:
        from huggingface_hub import snapshot_download

        return f"Hugging Face cache {snapshot_download(name, revision=revision, local_files_only=True)}", True
    except Exception:
        from huggingface_hub.constants import HF_HUB_CACHE

        at = f" at {revision}" if revision else ""
        return f"Hugging Face id {name}{at}: not in the cache ({HF_HUB_CACHE}); it downloads on first start", False


def _workspace_config(lines: list[str], hints: list[str]) -> None:
    """The ``.dmem/config.toml`` of the current directory or the nearest folder above it."""
    from .workspace_config import CONFIG_PATH, WorkspaceConfigError, read_workspace_config

    here = Path.cwd()
    root = next((folder for folder in (here, *here.parents) if (folder / CONFIG_PATH).is_file()), None)
    if root is None:
        lines.append(f"workspace config: none ({CONFIG_PATH} in {here} or above)")
        return
    try:
        config, warnings = read_workspace_config(root)
    except WorkspaceConfigError as error:
        lines.append(f"workspace config {root / CONFIG_PATH}: unusable")
        hints.append(f"{error}; until it is fixed that folder gets no memory")
        return
    lines.append(f"workspace config {config.path}")
    if config.adapter is not None:
        where, present = _where(config.adapter.name, config.adapter.revision)
        lines.append(f"  adapter {config.adapter}: {where}")
        if not present:
            hints.append(f"the adapter {config.path} names is not available offline: start once with network access")
    for name, value in (("memory", config.memory), ("stores", config.stores)):
        if value:
            lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
    for name, value in (("ignore", config.ignore), ("conventions", config.conventions)):
        if value:
            lines.append(f"  policy {name}: " + ", ".join(value))
    hints.extend(warnings)


def _torch_default_threads() -> str:
    try:
        import torch

        return str(torch.get_num_threads())  # nothing in doctor sets it
    except Exception:
        return "unknown"


def run_doctor(overrides: dict[str, Any]) -> int:
    settings, _ = parse_settings(overrides)
    lines = [f"dmem-lsp {__version__}", f"python {sys.version.split()[0]} on {platform.platform()}"]
    for distribution in ("torch", "transformers", "bitsandbytes", "pygls", "lsprotocol", "huggingface_hub"):
        lines.append(f"{distribution} {_version(distribution)}")
    hints: list[str] = []

    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            props = torch.cuda.get_device_properties(0)
            lines.append(f"CUDA: yes, {props.name}, {props.total_memory / 2**30:.1f} GiB (torch CUDA {torch.version.cuda})")
        else:
            lines.append(f"CUDA: no (torch build: {torch.version.cuda or 'CPU only'})")
            if settings.device == "cuda":
                hints.append("--device cuda is set but torch sees no GPU: install a CUDA build of torch, or use --device cpu")
    except Exception as error:
        lines.append(f"torch: cannot be imported ({error})")
        hints.append("reinstall torch: see README, 'Install'")

    try:
        import bitsandbytes.cextension as cextension

        backend = getattr(cextension, "BNB_BACKEND", "unknown")
        lines.append(f"bitsandbytes backend: {backend}")
        if cuda and backend not in ("CUDA", "ROCm"):
            hints.append("bitsandbytes has no CUDA support here, so NF4 cannot run on the GPU: reinstall bitsandbytes")
    except Exception as error:
        lines.append(f"bitsandbytes: cannot be imported ({error})")
        hints.append("NF4 needs bitsandbytes: pip install bitsandbytes, or use --quantization none")

    quantization = settings.quantization if settings.quantization != "auto" else ("nf4" if cuda else "none")
    device = settings.device if settings.device != "auto" else ("cuda" if cuda else "cpu")
    lines.append(f"would run on: {device}, quantization {quantization}")
    threads, why = torch_threads(settings.threads)
    lines.append(f"CPU threads: {threads} ({why}; torch's default here {_torch_default_threads()})")
    where, present = _where(settings.model)
    lines.append(f"model {settings.model}: {where}")
    if not present:
        hints.append("the model is not available offline: pass a local directory with --model, or start once with network access")
    if settings.adapter.lower() == "none":
        lines.append("adapter: none (a fresh, untrained δ-mem)")
    else:
        where, present = _where(settings.adapter)
        lines.append(f"adapter {settings.adapter}: {where}")
        if not present:
            hints.append("the adapter is not available offline: pass a directory with --adapter, or --adapter none")
    lines.append(f"HF_HUB_OFFLINE: {os.environ.get('HF_HUB_OFFLINE', 'unset')}")
    lines.append(f"workspace memory: {memory_root()}")
    _workspace_config(lines, hints)
    print("\n".join(lines))
    if hints:
        print("\nhints:\n" + "\n".join(f"- {hint}" for hint in hints))
    return 0
