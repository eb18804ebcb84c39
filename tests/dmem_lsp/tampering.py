"""Ways to alter a saved state file or an exported snapshot, each with what the refusal must name.

Every variant rewrites a real safetensors file the product wrote. Used by
tests/dmem_lsp/test_tampering.py and benchmarks/durability.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save

from dmem_lsp.workspace.state_file import checksum, read_file


def _rewrite(path: Path, change: Callable[[dict, dict], None], rechecksum: bool = False) -> None:
    tensors, metadata = read_file(path)
    change(tensors, metadata)
    if rechecksum:  # as a careful forger would: only the values' sanity can refuse it then
        metadata["checksum"] = checksum(tensors, metadata)
    path.write_bytes(save(tensors, metadata=metadata))


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # in the last tensor's bytes
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def swap(a: str, b: str):
    def change(tensors, metadata):
        tensors[a], tensors[b] = tensors[b], tensors[a]
    return change


def more_tokens(tensors, metadata):
    value = json.loads(metadata["tokens"])  # {store: count} in a state, a count in a snapshot
    metadata["tokens"] = (
        json.dumps({k: v + 1000 for k, v in value.items()}) if isinstance(value, dict) else str(value + 1000)
    )


def scale(tensors, metadata):
    for name in tensors:
        tensors[name] = tensors[name] * 1e6


def nan(tensors, metadata):
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")


def infinite(tensors, metadata):
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[-1] = float("inf")


def half(tensors, metadata):
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].half()


def drop_checksum(tensors, metadata):
    metadata.pop("checksum")


def add_source(tensors, metadata):
    metadata["sources"] = json.dumps({**json.loads(metadata.get("sources", "{}")), "setup.cfg": "0" * 64})


def relabel(tensors, metadata):
    metadata["store"] = "edits" if metadata["store"] == "debug" else "debug"


STATE_VARIANTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a flipped bit": (flip_a_bit, "fails its checksum"),
    "truncated": (truncate, "cannot be read"),
    "debug and edits renamed": (lambda p: _rewrite(p, swap("debug", "edits")), "fails its checksum"),
    "token counts changed": (lambda p: _rewrite(p, more_tokens), "fails its checksum"),
    "a source added": (lambda p: _rewrite(p, add_source), "fails its checksum"),
    "scaled by 1e6 under the copied fingerprint": (lambda p: _rewrite(p, scale), "fails its checksum"),
    "NaN, checksum recomputed": (lambda p: _rewrite(p, nan, rechecksum=True), "NaN or Inf values in conventions"),
    "Inf, checksum recomputed": (lambda p: _rewrite(p, infinite, rechecksum=True), "NaN or Inf values in edits"),
    "float16, checksum recomputed": (lambda p: _rewrite(p, half, rechecksum=True), "not float32: conventions"),
    "checksum removed": (lambda p: _rewrite(p, drop_checksum), "carries no checksum"),
}
"""{variant: (tamper with a state file, what the refusal says)}."""

SNAPSHOT_VARIANTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "a flipped bit": (flip_a_bit, "fails its checksum"),
    "store relabelled debug to edits": (lambda p: _rewrite(p, relabel), "fails its checksum"),
    "token count changed": (lambda p: _rewrite(p, more_tokens), "fails its checksum"),
    "scaled by 1e6 under the copied fingerprint": (lambda p: _rewrite(p, scale), "fails its checksum"),
    "NaN, checksum recomputed": (lambda p: _rewrite(p, nan, rechecksum=True), "NaN or Inf values in state"),
    "float16, checksum recomputed": (lambda p: _rewrite(p, half, rechecksum=True), "not float32: state"),
    "truncated": (truncate, "cannot be read"),
    "checksum removed": (lambda p: _rewrite(p, drop_checksum), "carries no checksum"),
}


def sample_states(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(2, 1, 8, 8, generator=generator) for name in ("conventions", "debug", "edits")}
