"""The named stores of δ-mem attached to one model (``memory.attaching.attach``), and its passes.

A forward outside ``Memory.writing`` is a read-only pass: every token reads the same fixed
state, the sum of all stores, and nothing changes. Inside ``writing(store=...)`` a forward
is a write pass into that one store (TSW or SSW; the math is in ``memory.passes``).

By default every store is one state that the rows of a batch share (written one after
another); ``reset(rows=B)`` gives every store a state per batch row, so that training writes
and reads many episodes in one forward each; ``select_rows`` picks a state per row.

Who runs when in one model forward (the ordering contract; do not change it lightly):

1. the model's forward pre-hook (``_capture_mask``) keeps the ``attention_mask`` keyword,
   the [B, T] padding mask: the attention blocks receive the model's 4-D causal mask or
   none, so write passes take padding from here (a mask passed positionally is not seen,
   and every token its segments allow is written).
2. each attention block runs its ``MemoryBlock`` (``memory.block``): q_proj's wrapper calls
   ``_reads`` (read; or write this layer's slice of the store, with the mask of 1., and
   read) and hands o_proj's correction to o_proj's wrapper.
3. the model's forward hook (``_release_mask``) drops the mask and any pending correction.
   A forward that raises skips 3.: the next forward's 1. replaces the mask, and leaving
   ``writing`` clears pending corrections. Only the model passed to ``attach`` has these
   hooks: calling a block or the inner base model directly uses the mask 1. last kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn

from .block import MemoryBlock
from .config import DeltaMemConfig
from .layer import DeltaMemLayer
from .passes import check_rows, segment_pass, token_pass, written_tokens

__all__ = ["Memory"]


@dataclass(frozen=True)
class _WritePass:
    store: str
    segments: torch.Tensor | None  # [B, T] segment ids, -1 = not written


class Memory:
    """δ-mem attached to one model: its layers, its named stores and its pass mode."""

    def __init__(
        self, model: nn.Module, config: DeltaMemConfig, blocks: list[nn.Module], layers: list[DeltaMemLayer]
    ) -> None:
        self.model = model
        self.config = config
        self.layers = layers
        self._pass: _WritePass | None = None
        self._attention_mask: torch.Tensor | None = None
        """The [B, T] padding mask of the model forward running now (see the module docstring)."""
        self._states: dict[str, list[torch.Tensor]] = {}
        self._nonzero: set[str] = set()
        self._rows: int | None = None
        self.reset()
        self._blocks = [MemoryBlock(block, layer, self._reads) for block, layer in zip(blocks, layers, strict=True)]
        self._hooks = [
            model.register_forward_pre_hook(self._capture_mask, with_kwargs=True),
            model.register_forward_hook(self._release_mask),
        ]

    # ----------------------------------------------------------------- stores
    @property
    def stores(self) -> tuple[str, ...]:
        return self.config.stores

    @property
    def rows(self) -> int | None:
        """B when every store holds B independent states (``reset(rows=B)``), else None."""
        return self._rows

    def states(self) -> dict[str, torch.Tensor]:
        """A copy of every store: {name: float32 [layers, heads, rank, rank]} on the CPU
        ([layers, rows, heads, rank, rank] with independent rows)."""
        return {name: torch.stack([s.detach().cpu() for s in per_layer]) for name, per_layer in self._states.items()}

    def load_states(self, states: dict[str, torch.Tensor]) -> None:
        """Replace the named stores (others keep their state). Shapes and names are checked first."""
        if self._rows is not None:
            raise RuntimeError("load_states needs one shared state per store; call reset() first")
        expected = (len(self.layers), self.config.state_heads, self.config.rank, self.config.rank)
        unknown = sorted(set(states) - set(self.stores))
        if unknown:
            raise ValueError(f"unknown memory stores {unknown}; this memory has {list(self.stores)}")
        for name, tensor in states.items():
            if tuple(tensor.shape) != expected:
                raise ValueError(f"store {name!r} has shape {tuple(tensor.shape)}, expected {expected}")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"store {name!r} holds non-finite values")
        for name, tensor in states.items():
            self._states[name] = [
                tensor[i].to(device=_state_device(layer), dtype=torch.float32).clone()
                for i, layer in enumerate(self.layers)
            ]
            self._mark(name)

    def reset(self, store: str | None = None, *, rows: int | None = None) -> None:
        """Zero one store, or all of them.

        ``rows=B`` (all stores only) gives every store B independent zero states, one per
        batch row: a write pass of B rows then writes row i into state i alone, and a read
        pass of B rows reads row i from state i. ``reset()`` returns to one shared state
        per store; ``reset(store)`` zeroes that store and keeps the current rows.
        """
        if rows is not None:
            if store is not None:
                raise ValueError("reset(rows=...) applies to every store; do not name one")
            if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
                raise ValueError(f"rows must be a positive integer, got {rows!r}")
            if self._pass is not None:
                raise RuntimeError("cannot change rows during a write pass")
        if store is None:
            self._rows = rows
        lead = () if self._rows is None else (self._rows,)
        for name in self.stores if store is None else (self._check_store(store),):
            self._states[name] = [
                torch.zeros(
                    *lead, self.config.state_heads, self.config.rank, self.config.rank, device=_state_device(layer)
                )
                for layer in self.layers
            ]
            self._nonzero.discard(name)

    def select_rows(self, index: torch.Tensor | list[int]) -> None:
        """With independent rows, keep ``states[index]`` in every store: row j of the next
        passes uses what row ``index[j]`` holds now (e.g. several queries of each written
        episode). Gradients flow through the selection."""
        if self._rows is None:
            raise RuntimeError("select_rows needs independent rows; call reset(rows=B) first")
        if self._pass is not None:
            raise RuntimeError("cannot select rows during a write pass")
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or len(index) == 0:
            raise ValueError(f"select_rows needs a non-empty 1-D index, got shape {tuple(index.shape)}")
        if int(index.min()) < 0 or int(index.max()) >= self._rows:
            raise ValueError(f"select_rows index out of range for {self._rows} rows")
        for name, per_layer in self._states.items():
            self._states[name] = [s[index.to(s.device)] for s in per_layer]
        self._rows = len(index)

    @contextlib.contextmanager
    def writing(self, store: str, segments: torch.Tensor | None = None) -> Iterator[Memory]:
        """Every forward inside is a write pass into ``store``.

        ``segments`` [B, T] (optional; required for SSW) gives each token a segment id,
        -1 for tokens that are not written. Padding (attention_mask 0) is never written.
        A batch is written as its rows one after another into the store's one state, or,
        after ``reset(rows=B)``, each row into its own state.
        """
        self._check_store(store)
        if self._pass is not None:
            raise RuntimeError(f"already writing into {self._pass.store!r}; write passes do not nest")
        if self.config.write == "segment" and segments is None:
            raise ValueError("segment writes (SSW) need segments=[B, T] segment ids")
        if segments is not None and segments.dim() != 2:
            raise ValueError(f"segments must be [batch, tokens], got shape {tuple(segments.shape)}")
        self._pass = _WritePass(store, segments)
        try:
            yield self
        finally:
            self._pass = None
            self._clear_pending()

    # ------------------------------------------------------------- adapter
    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Adapter parameters as ``layers.{i}.{name}``."""
        for layer in self.layers:
            for name, param in layer.named_parameters():
                yield f"layers.{layer.index}.{name}", param

    def parameters(self) -> Iterator[nn.Parameter]:
        return (param for _, param in self.named_parameters())

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: param.detach() for name, param in self.named_parameters()}

    def load_adapter_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load adapter weights; missing, unexpected and misshapen keys are refused by name."""
        problems = self.adapter_problems(tensors)
        if problems:
            raise ValueError("adapter does not fit this model: " + "; ".join(problems))
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(tensors[name].to(param.device, torch.float32))

    def adapter_problems(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """Why adapter weights ``tensors`` cannot be loaded here: missing, unexpected and
        misshapen keys, by name (empty: they fit)."""
        own = dict(self.named_parameters())
        problems = []
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing:
            problems.append(f"missing keys: {_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_list(unexpected)}")
        for name in sorted(set(own) & set(tensors)):
            if tuple(tensors[name].shape) != tuple(own[name].shape):
                problems.append(f"{name} has shape {tuple(tensors[name].shape)}, expected {tuple(own[name].shape)}")
        return problems

    def detach(self) -> None:
        """Remove δ-mem from the model, restoring the original projections."""
        for block in self._blocks:
            block.detach()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ------------------------------------------------------------ forward
    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        self._attention_mask = mask if isinstance(mask, torch.Tensor) else None

    def _release_mask(self, module: nn.Module, args: tuple, output: object) -> None:
        self._attention_mask = None
        self._clear_pending()

    def _clear_pending(self) -> None:
        for block in self._blocks:
            block.clear()

    def _read(self, names: tuple[str, ...], index: int, q: torch.Tensor) -> torch.Tensor | None:
        """Σ_store S_store q, per head: q [B, T, h, r] -> [B, T, h, r] (None if all zero)."""
        names = tuple(n for n in names if n in self._nonzero)
        if not names:
            return None
        S = cast(torch.Tensor, sum(self._states[n][index] for n in names))  # [h, r, r], or [B, h, r, r] with rows
        if S.dim() == 3:
            return torch.einsum("hij,bthj->bthi", S, q)
        check_rows(self._rows, q.shape[0])
        return torch.einsum("bhij,bthj->bthi", S, q)

    def _reads(self, layer: DeltaMemLayer, x: torch.Tensor) -> torch.Tensor | None:
        """What this forward does with ``layer``'s input x [B, T, H]: the reads o [B, T, h, r]
        of a read-only pass, or of a write pass (which updates the store); None: all zero."""
        write = self._pass
        if write is None:
            return self._read(self.stores, layer.index, layer.project_read(x)) if self._nonzero else None
        if self.config.write == "token":
            return self._write_tokens(layer, x, write)
        return self._write_segments(layer, x, write)

    def _write_tokens(self, layer: DeltaMemLayer, x: torch.Tensor, write: _WritePass) -> torch.Tensor:
        """TSW: the rows of the batch, one after another, each token reading before it writes."""
        B, T, _ = x.shape
        written = written_tokens(self._attention_mask, write.segments, B, T, x.device)
        S = self._states[write.store][layer.index]
        o, q, S = token_pass(layer, x, S, written, shared=self._rows is None, chunk_size=self.config.chunk_size)
        self._states[write.store][layer.index] = S
        self._nonzero.add(write.store)
        others = self._read(tuple(n for n in self.stores if n != write.store), layer.index, q)
        return o if others is None else o + others

    def _write_segments(self, layer: DeltaMemLayer, x: torch.Tensor, write: _WritePass) -> torch.Tensor | None:
        """SSW: each segment written once as the mean of x over its tokens; reads see the old state."""
        B, T, _ = x.shape
        o = self._read(self.stores, layer.index, layer.project_read(x))  # state from before the pass
        written = written_tokens(self._attention_mask, write.segments, B, T, x.device)
        segments = cast(torch.Tensor, write.segments)  # writing() requires them for SSW
        S = self._states[write.store][layer.index]
        shared, chunk_size = self._rows is None, self.config.chunk_size
        after = segment_pass(layer, x, segments, written, S, shared=shared, chunk_size=chunk_size)
        if after is not None:
            self._states[write.store][layer.index] = after
            self._nonzero.add(write.store)
        return o

    def _check_store(self, store: str) -> str:
        if store not in self.stores:
            raise ValueError(f"unknown memory store {store!r}; this memory has {list(self.stores)}")
        return store

    def _mark(self, name: str) -> None:
        if any(bool(s.any()) for s in self._states[name]):
            self._nonzero.add(name)
        else:
            self._nonzero.discard(name)


def _state_device(layer: DeltaMemLayer) -> torch.device:
    """States live beside their layer's parameters (on the CPU for a meta-device model)."""
    device = layer.beta_bias.device
    return torch.device("cpu") if device.type == "meta" else device


def _list(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
