"""Settings: one frozen, fully defaulted tree, parsed from what editors send.

Editors send settings as JSON in ``initializationOptions`` and
``workspace/didChangeConfiguration`` (camelCase keys, optionally under a ``dmem``
section). ``parse_settings`` turns that into ``Settings``; a value of the wrong type or
out of range falls back to its default and comes back as a warning the server shows
to the user. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from dmem_lsp.runtime.options import DEFAULT_ADAPTER, DEFAULT_MODEL, EngineOptions

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_ADAPTER",
    "Settings",
    "CompletionSettings",
    "ExplainSettings",
    "MemorySettings",
    "parse_settings",
    "merge",
    "ENGINE_KEYS",
    "CLIENT_KEY",
    "cpu_cores",
    "torch_threads",
    "check_value",
]

ENGINE_KEYS = ("model", "adapter", "device", "quantization", "threads")
"""The settings read once, when the model loads: changing them needs a restart."""
CLIENT_KEY = "client"
"""``dmem.client``: what an editor client keeps for itself (how to start the server,
forwarding of diagnostics). It travels with the rest of the section and is ignored here."""


def _setting(
    default: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] | None = None,
    auto: bool = False,
) -> Any:
    """``auto``: an integer setting that also takes the string "auto", as 0."""
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum, "choices": choices, "auto": auto})


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, so taskset and cgroups count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def torch_threads(setting: int, cores: int | None = None) -> tuple[int, str]:
    """The torch thread count for ``setting``, and why: a positive setting as is;
    0 (auto) takes OMP_NUM_THREADS when set, else half the cores, at most 4, and 1 on two
    cores or fewer: torch's default (every core) collapses when other processes use them
    (benchmarks/lsp_latency.py, README "Benchmarks")."""
    if setting > 0:
        return setting, "set"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "auto: OMP_NUM_THREADS"
    cores = cpu_cores() if cores is None else cores
    return (1 if cores <= 2 else min(cores // 2, 4)), f"auto: {cores} cores"


@dataclass(frozen=True)
class CompletionSettings:
    enabled: bool = _setting(True)
    """Answer inline completion and completion requests at all."""
    max_tokens: int = _setting(64, minimum=1)
    """The most tokens one completion generates."""
    prefix_tokens: int = _setting(1536, minimum=0)
    """How many tokens of the text before the cursor the prompt keeps."""
    suffix_tokens: int = _setting(512, minimum=0)
    """How many tokens of the text after the cursor the prompt keeps."""
    stop: tuple[str, ...] = _setting(("\n\n\n",))
    """Strings that end a multi-line completion (a single-line one also ends at a newline)."""
    debounce_ms: int = _setting(150, minimum=0)
    """How long an automatically triggered completion waits for the user to type on."""


@dataclass(frozen=True)
class ExplainSettings:
    max_tokens: int = _setting(384, minimum=1)
    """The most tokens one explanation generates."""
    code_tokens: int = _setting(1024, minimum=16)
    """How many tokens of the selected code the prompt keeps (its surroundings get half)."""
    deadline_ms: int = _setting(60000, minimum=0)
    """The longest an explanation generates once the model is ready (0: no limit); then it stops
    and what it has is shown, marked as cut short. Work a client has given up on ends here."""


@dataclass(frozen=True)
class MemorySettings:
    enabled: bool = _setting(True)
    """Write what the workspace teaches into its memory (reads happen either way)."""
    edit_debounce_ms: int = _setting(1500, minimum=0)
    """How long after the last change an edit is written (a save writes at once)."""
    save_debounce_ms: int = _setting(2000, minimum=0)
    """How long after the last write the memory is saved to disk."""
    max_file_bytes: int = _setting(262144, minimum=1024, maximum=16 << 20)
    """Files and texts larger than this are never written (at most 16 MiB: each is read, scanned and diffed whole)."""
    convention_tokens: int = _setting(16384, minimum=0)
    """Tokens of convention files written when a workspace is first opened."""
    convention_file_tokens: int = _setting(2048, minimum=16)
    """Tokens of one convention file written at most."""
    write_chunk_tokens: int = _setting(256, minimum=16)
    """Tokens per write pass; a completion waits behind at most one."""


@dataclass(frozen=True)
class Settings:
    model: str = _setting(DEFAULT_MODEL)
    """A Hugging Face model id or a local directory (read at start-up)."""
    adapter: str = _setting(DEFAULT_ADAPTER)
    """A δ-mem adapter (hub id or directory), or "none" for a fresh, untrained one."""
    device: str = _setting("auto", choices=("auto", "cuda", "cpu"))
    """Where the model runs: auto picks CUDA when torch sees a GPU."""
    quantization: str = _setting("auto", choices=("auto", "nf4", "none"))
    """auto: NF4 (4-bit) on CUDA, full precision on the CPU."""
    threads: int = _setting(0, minimum=0, auto=True)
    """torch's CPU threads (``torch.set_num_threads`` on the inference worker); 0 or "auto":
    OMP_NUM_THREADS when set, else half the cores, at most 4 (1 on two cores or fewer)."""
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    explain: ExplainSettings = field(default_factory=ExplainSettings)
    memory: MemorySettings = field(default_factory=MemorySettings)

    def engine_options(self) -> EngineOptions:
        """The ``EngineOptions`` these settings ask for (torch-free: the engine loads them)."""
        return EngineOptions(
            model=self.model,
            adapter=None if self.adapter.lower() == "none" else self.adapter,
            device=self.device,
            quantization=None if self.quantization == "auto" else self.quantization,
            threads=torch_threads(self.threads)[0],
        )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def check_value(value: Any, kind: Any, meta: Mapping[str, Any]) -> tuple[bool, Any, str]:
    """Whether ``value`` is a valid setting of type ``kind`` (bool, int, str or tuple[str, ...])
    under the field metadata ``meta`` (``minimum``, ``maximum``, ``choices``, ``auto``):
    (valid, the value as the setting holds it, what was expected, for the warning).
    ``parse_settings`` and ``.dmem/config.toml`` (``workspace.config``) check by it."""
    if kind is bool:
        return isinstance(value, bool), value, "true or false"
    if kind is int:
        minimum, maximum = meta.get("minimum"), meta.get("maximum")
        bounds = [f"≥ {minimum}"] * (minimum is not None) + [f"≤ {maximum}"] * (maximum is not None)
        expected = " ".join(["an integer", " and ".join(bounds)]).strip() + (' or "auto"' if meta.get("auto") else "")
        if meta.get("auto") and value == "auto":
            return True, 0, expected
        ok = isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        return ok, value, expected
    if kind is str:
        choices = meta.get("choices")
        expected = ("one of " + ", ".join(choices)) if choices else "a non-empty string"
        ok = isinstance(value, str) and bool(value) and (choices is None or value in choices)
        return ok, value, expected
    # tuple[str, ...]
    ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    return ok, tuple(value) if ok else value, "a list of strings"


def _parse(cls: type, raw: dict[str, Any], path: str, warnings: list[str]) -> Any:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    known = {_camel(f.name) for f in dataclasses.fields(cls)} | {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            warnings.append(f"{path}{key}: unknown setting, ignored")
    for f in dataclasses.fields(cls):
        key = _camel(f.name)
        value = raw.get(key, raw.get(f.name))
        if value is None:
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            if value == []:  # an empty Lua table (Neovim) is encoded as []
                value = {}
            if isinstance(value, dict):
                values[f.name] = _parse(kind, value, f"{path}{key}.", warnings)
            else:
                warnings.append(f"{path}{key}: expected an object, got {value!r}; using the defaults")
            continue
        ok, value, expected = check_value(value, kind, f.metadata)
        if ok:
            values[f.name] = value
        else:
            warnings.append(f"{path}{key}: expected {expected}, got {value!r}; using {f.default!r}")
    return cls(**values)


def _section(raw: Any) -> Any:
    """The ``dmem`` section of ``raw`` when it has one, else ``raw``. An empty list is an empty
    object: Neovim's Lua encodes an empty table (``settings = { dmem = {} }``) as ``[]``."""
    if isinstance(raw, dict) and (isinstance(raw.get("dmem"), dict) or raw.get("dmem") == []):
        raw = raw["dmem"]
    return {} if raw == [] else raw


def parse_settings(raw: Any) -> tuple[Settings, list[str]]:
    """Settings from an editor's JSON, and a warning for every value that was ignored."""
    warnings: list[str] = []
    raw = _section(raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return Settings(), [f"dmem: expected an object of settings, got {raw!r}; using the defaults"]
    raw = {key: value for key, value in raw.items() if key != CLIENT_KEY}
    return _parse(Settings, raw, "dmem.", warnings), warnings


def merge(base: Any, override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base`` (nested objects merged key by key)."""
    base = _section(base)
    merged = dict(base) if isinstance(base, dict) else {}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged
