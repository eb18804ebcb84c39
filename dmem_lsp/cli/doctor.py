"""``dmem-lsp doctor``: what a user needs to see when something is wrong.

Prints versions, whether torch sees CUDA and whether bitsandbytes can run NF4 there,
where the model and adapter would be loaded from (without downloading anything), and
where workspace memory is kept, the ``.dmem/config.toml`` of the workspace folder an
editor opens here (the nearest folder up with a root marker, ``roots.py``), followed by
hints for what looks wrong. Writes to stdout; it is a terminal command, not the server.
Exits 0 when the server would start (load its model) as things are, 1 when it would not.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from dmem_lsp import __version__
from dmem_lsp.runtime.download import download_command
from dmem_lsp.runtime.locations import is_hub_id, local_directory, missing_directory
from dmem_lsp.runtime.settings import parse_settings, torch_threads
from dmem_lsp.workspace.files import memory_root
from dmem_lsp.workspace.roots import workspace_root

__all__ = ["run_doctor"]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _where(name: str, revision: str | None = None) -> tuple[str, bool]:
    """(where ``name`` would load from, whether it is there without a download)."""
    directory = local_directory(name, revision)
    if directory is not None:
        return f"local directory {directory.resolve()}", True
    if not is_hub_id(name, revision):
        return f"{name} (not a directory)", False
    try:
        from huggingface_hub import snapshot_download

        return f"Hugging Face cache {snapshot_download(name, revision=revision, local_files_only=True)}", True
    except Exception:
        from huggingface_hub.constants import HF_HUB_CACHE

        at = f" at {revision}" if revision else ""
        then = (
            "HF_HUB_OFFLINE=1: it cannot be downloaded"
            if os.environ.get("HF_HUB_OFFLINE") == "1"
            else "it downloads on first start"
        )
        return f"Hugging Face id {name}{at}: not in the cache ({HF_HUB_CACHE}); {then}", False


def _local(name: str) -> Path | None:
    """The directory ``name`` loads from without a download, or None."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        return None


def _prompt_line(model: str, adapter: str) -> str:
    """Which completion prompt shape the server would build (fim or chat), and why."""
    from dmem_lsp.runtime.prompts import recorded_shape, shape_reason
    from memory.adapter_io import CONFIG_NAME, OFFICIAL_CONFIG_NAME

    meta = None
    if adapter.lower() != "none":
        directory = _local(adapter)
        if directory is None:
            return "completion prompts: decided once the adapter is here (by its recorded shape)"
        try:
            if (directory / CONFIG_NAME).is_file():
                meta = json.loads((directory / CONFIG_NAME).read_text())
            elif (directory / OFFICIAL_CONFIG_NAME).is_file():
                meta = {"format": "official"}
        except (OSError, ValueError) as error:
            return f"completion prompts: unknown, the adapter's config cannot be read ({error})"
    shape, why = recorded_shape(meta or ({} if adapter.lower() != "none" else None), model)
    if shape is None:
        directory = _local(model)
        if directory is None:
            return f"completion prompts: decided by the tokenizer once the model is here ({why})"
        try:
            import transformers

            shape, why = shape_reason(transformers.AutoTokenizer.from_pretrained(directory), None, why)
        except Exception as error:
            return f"completion prompts: unknown, the tokenizer cannot be read ({' '.join(str(error).split())[:200]})"
    return f"completion prompts: {shape} ({why})"


def _fetch_hint(what: str, name: str, flag: str, revision: str | None = None) -> str:
    """What to do about ``name`` that is not here: a missing directory, or a hub id not in the cache."""
    if not is_hub_id(name, revision):
        return f"the {what} directory {name} {missing_directory(name)}: {flag}"
    fetch = download_command(**({"model": name} if what == "model" else {"adapter": name, "revision": revision}))
    return f"the {what} {name} is not in the Hugging Face cache: run `{fetch}` with network access, or {flag}"


def _workspace_config(lines: list[str], hints: list[str]) -> bool:
    """The ``.dmem/config.toml`` of the workspace folder here; True when it names an adapter that is here."""
    from dmem_lsp.workspace.config import CONFIG_PATH, WorkspaceConfigError, read_workspace_config

    root = workspace_root(Path.cwd())
    lines.append(f"workspace folder: {root} (as an editor opens it here)")
    if not (root / CONFIG_PATH).is_file():
        lines.append(f"workspace config: none ({root / CONFIG_PATH})")
        return False
    try:
        config, warnings = read_workspace_config(root)
    except WorkspaceConfigError as error:
        lines.append(f"workspace config {root / CONFIG_PATH}: unusable")
        hints.append(f"{error}; until it is fixed that folder gets no memory")
        return False
    lines.append(f"workspace config {config.path}")
    present = False
    if config.adapter is not None:
        where, present = _where(config.adapter.name, config.adapter.revision)
        lines.append(f"  adapter {config.adapter}: {where}")
        if not present:
            fix = f"fix [adapter] in {config.path}"
            hints.append(
                f"{config.path} names an adapter that is not here: "
                + _fetch_hint("adapter", config.adapter.name, fix, config.adapter.revision)
                + "; until then that folder gets no memory"
            )
    for name, value in (("memory", config.memory), ("stores", config.stores)):
        if value:
            lines.append(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in value.items()))
    for name, value in (("ignore", config.ignore), ("conventions", config.conventions)):
        if value:
            lines.append(f"  policy {name}: " + ", ".join(value))
    hints.extend(warnings)
    return present


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
    fatal: list[str] = []
    """Why the server would not start (a subset of the hints' reasons)."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"

    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            props = torch.cuda.get_device_properties(0)
            lines.append(
                f"CUDA: yes, {props.name}, {props.total_memory / 2**30:.1f} GiB (torch CUDA {torch.version.cuda})"
            )
        else:
            lines.append(f"CUDA: no (torch build: {torch.version.cuda or 'CPU only'})")
            if settings.device == "cuda":
                hints.append(
                    "--device cuda is set but torch sees no GPU: install a CUDA build of torch, or use --device cpu"
                )
                fatal.append("no CUDA device")
    except Exception as error:
        lines.append(f"torch: cannot be imported ({error})")
        hints.append("reinstall torch: see README, 'GPU'")
        fatal.append("torch cannot be imported")

    quantization = settings.quantization if settings.quantization != "auto" else ("nf4" if cuda else "none")
    try:
        import bitsandbytes.cextension as cextension

        backend = getattr(cextension, "BNB_BACKEND", "unknown")
        lines.append(f"bitsandbytes backend: {backend}")
        if cuda and backend not in ("CUDA", "ROCm"):
            hints.append("bitsandbytes has no CUDA support here, so NF4 cannot run on the GPU: reinstall bitsandbytes")
    except Exception as error:
        lines.append(f"bitsandbytes: cannot be imported ({error})")
        hints.append("NF4 needs bitsandbytes: pip install bitsandbytes, or use --quantization none")
        if quantization == "nf4":
            fatal.append("NF4 without bitsandbytes")

    device = settings.device if settings.device != "auto" else ("cuda" if cuda else "cpu")
    lines.append(f"would run on: {device}, quantization {quantization}")
    threads, why = torch_threads(settings.threads)
    lines.append(f"CPU threads: {threads} ({why}; torch's default here {_torch_default_threads()})")
    folder_lines: list[str] = []
    folder_hints: list[str] = []
    folder_adapter = _workspace_config(folder_lines, folder_hints)  # the adapter's hint depends on it
    where, present = _where(settings.model)
    lines.append(f"model {settings.model}: {where}")
    if not present:
        hints.append(_fetch_hint("model", settings.model, "pass a local directory with --model"))
        _unless_downloaded(fatal, "the model", settings.model, offline)
    if settings.adapter.lower() == "none":
        lines.append("adapter: none (a fresh, untrained δ-mem)")
    else:
        where, present = _where(settings.adapter)
        lines.append(f"adapter {settings.adapter}: {where}")
        if not present and folder_adapter:  # the server attaches the folder's adapter; other folders need this one
            hints.append(
                f"folders without an adapter of their own use {settings.adapter}, which is not here: "
                + _fetch_hint("adapter", settings.adapter, "pass a directory with --adapter")
            )
        elif not present:
            hints.append(_fetch_hint("adapter", settings.adapter, "pass a directory with --adapter, or --adapter none"))
            _unless_downloaded(fatal, "the adapter", settings.adapter, offline)
    lines.append(_prompt_line(settings.model, settings.adapter))
    lines.append(f"HF_HUB_OFFLINE: {os.environ.get('HF_HUB_OFFLINE', 'unset')}")
    lines.append(f"workspace memory: {memory_root()}")
    lines.extend(folder_lines)
    hints.extend(folder_hints)
    print("\n".join(lines))
    if hints:
        print("\nhints:\n" + "\n".join(f"- {hint}" for hint in hints))
    if fatal:
        print(f"\nthe server would not start: {'; '.join(fatal)}")
        return 1
    print("\nthe server would start")
    return 0


def _unless_downloaded(fatal: list[str], what: str, name: str, offline: bool) -> None:
    """A missing directory always stops the server; a hub id not in the cache only offline
    (with network access the server downloads it on its first start)."""
    if not is_hub_id(name) or offline:
        fatal.append(f"{what} {name} is not here" + (" (HF_HUB_OFFLINE=1)" if offline else ""))
