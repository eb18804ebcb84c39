"""Attaching δ-mem to a Hugging Face causal LM, and the named stores it reads and writes.

``attach`` finds every attention block with ``q_proj`` and ``o_proj`` (Qwen3, Qwen2,
Llama, Mistral, SmolLM3 and their relatives), adds a ``DeltaMemLayer`` to it as
``self_attn.delta_mem`` and wraps the two projections:

    q_proj(x) + s · o W_dqᵀ        o_proj(·) + s · o W_doᵀ

where o are the reads of the layer's input x (the tensor q_proj receives). K and V are
untouched, so the KV cache holds exactly the base model's keys and values.

A forward outside ``Memory.writing`` is a read-only pass: every token reads the same fixed
state, the sum of all stores, and nothing changes. Inside ``writing(store=...)`` a
forward is a write pass into that one store (TSW: token by token, each token reading
before it writes; SSW: one write per segment, reads see the state from before the pass).

By default every store is one state and the rows of a batch share it (a batch is written
as its rows one after another). ``reset(rows=B)`` gives every store B independent states
instead, one per batch row: many episodes written and read in one forward each, which is
how training goes faster. ``select_rows`` then picks a state per row of the next reads.

Who runs when, in one model forward: a pre-hook on the model keeps its ``attention_mask``
(the [B, T] padding mask: the attention blocks themselves receive the model's 4-D causal
mask, or none) for the write passes, and its forward hook lets it go. In between, each
attention block runs its ``MemoryBlock`` (``memory.block``): q_proj's wrapper reads or
writes this block's state and hands o_proj's correction to o_proj's wrapper.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn

from .block import MemoryBlock
from .config import DeltaMemConfig
from .delta_rule import delta_rule_chunked, delta_rule_step
from .layer import DeltaMemLayer, base_weight
from .wrappers import MemoryLinear

__all__ = ["Memory", "attach", "attention_blocks", "AttachError", "TESTED_MODEL_TYPES"]

log = logging.getLogger(__name__)

TESTED_MODEL_TYPES = ("qwen3", "qwen2", "llama", "mistral", "smollm3")


class AttachError(ValueError):
    """δ-mem cannot be attached to this model."""


@dataclass(frozen=True)
class _WritePass:
    store: str
    segments: torch.Tensor | None  # [B, T] segment ids, -1 = not written


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """Every attention block of ``model`` with separate ``q_proj`` and ``o_proj`` modules, in
    order (with δ-mem attached or not); AttachError when there are none."""
    blocks = [
        module
        for module in model.modules()
        if isinstance(getattr(module, "q_proj", None), nn.Module)
        and isinstance(getattr(module, "o_proj", None), nn.Module)
    ]
    if not blocks:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise AttachError(
            f"δ-mem cannot attach to {model_type!r}: it needs attention blocks with separate q_proj and "
            f"o_proj projections (tested: {', '.join(TESTED_MODEL_TYPES)})"
        )
    return blocks


def _unattached_blocks(model: nn.Module) -> list[nn.Module]:
    blocks = attention_blocks(model)
    if any(isinstance(block.q_proj, MemoryLinear) for block in blocks):
        raise AttachError("δ-mem is already attached to this model")
    return blocks


def attach(model: nn.Module, config: DeltaMemConfig | None = None) -> Memory:
    """Attach freshly initialised δ-mem to ``model``; states start at zero.

    With zero states the model's outputs are the base model's, bit for bit. On the meta
    device (counting parameters without weights) the parameters are left uninitialised.
    """
    config = config or DeltaMemConfig()
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TESTED_MODEL_TYPES:
        log.warning("δ-mem has not been tested with model type %r; attaching anyway", model_type)
    blocks = _unattached_blocks(model)
    layers = []
    for index, block in enumerate(blocks):
        q_proj, o_proj = cast(nn.Linear, block.q_proj), cast(nn.Linear, block.o_proj)  # or bitsandbytes' subclass
        device = q_proj.weight.device
        layer = DeltaMemLayer(index, q_proj.in_features, q_proj.out_features, o_proj.out_features, config, device)
        if device.type != "meta":
            layer.reset_parameters(base_weight(q_proj), base_weight(o_proj))
        layers.append(layer)
    return Memory(model, config, blocks, layers)


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

    def _written(self, write: _WritePass, B: int, T: int, device: torch.device) -> torch.Tensor | None:
        """[B, T] bool: which tokens of this forward are written (None: all of them)."""
        written = None
        mask = self._attention_mask
        if mask is not None:
            if mask.dim() != 2 or mask.shape[0] != B or mask.shape[1] < T:
                raise ValueError(
                    f"write passes need a 2-D attention_mask [batch, tokens]; got shape {tuple(mask.shape)}"
                )
            written = mask[:, -T:].to(device).bool()
        segments = write.segments
        if segments is not None:
            if tuple(segments.shape) != (B, T):
                raise ValueError(f"segments have shape {tuple(segments.shape)} but this forward has {(B, T)}")
            by_segment = segments.to(device) >= 0
            written = by_segment if written is None else written & by_segment
        return written

    def _read(self, names: tuple[str, ...], index: int, q: torch.Tensor) -> torch.Tensor | None:
        """Σ_store S_store q, per head: q [B, T, h, r] -> [B, T, h, r] (None if all zero)."""
        names = tuple(n for n in names if n in self._nonzero)
        if not names:
            return None
        S = cast(torch.Tensor, sum(self._states[n][index] for n in names))  # [h, r, r], or [B, h, r, r] with rows
        if S.dim() == 3:
            return torch.einsum("hij,bthj->bthi", S, q)
        self._check_rows(q.shape[0])
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
        store = write.store
        q, k, v, beta, log_lam = layer.project(x)  # [B, T, h, r] each
        written = self._written(write, B, T, x.device)
        if written is not None:  # unwritten tokens: β = 0, λ = 1 (no change)
            keep = written[..., None, None]  # torch.where, not a product: pads may hold NaN
            k, v, beta, log_lam = (torch.where(keep, t, 0.0) for t in (k, v, beta, log_lam))
        h, r = q.shape[-2:]
        if self._rows is None:  # one shared state: the rows one after another
            flat = [t.reshape(1, B * T, h, r) for t in (q, k, v, beta, log_lam)]  # [1, B·T, h, r]
            S0 = self._states[store][layer.index].unsqueeze(0)  # [1, h, r, r]
        else:  # a state per row
            self._check_rows(B)
            flat = [q, k, v, beta, log_lam]
            S0 = self._states[store][layer.index]  # [B, h, r, r]
        fq, fk, fv, fbeta, flog_lam = flat
        if fq.shape[1] == 1:  # decoding: one step
            o, S = delta_rule_step(fq[:, 0], fk[:, 0], fv[:, 0], fbeta[:, 0], S0, log_lam=flog_lam[:, 0])
            o = o.unsqueeze(1)
        else:
            o, S = delta_rule_chunked(fq, fk, fv, fbeta, S0, log_lam=flog_lam, chunk_size=self.config.chunk_size)
        self._states[store][layer.index] = S[0] if self._rows is None else S
        self._nonzero.add(store)
        o = o.reshape(B, T, h, r)
        others = self._read(tuple(n for n in self.stores if n != store), layer.index, q)
        return o if others is None else o + others

    def _write_segments(self, layer: DeltaMemLayer, x: torch.Tensor, write: _WritePass) -> torch.Tensor | None:
        """SSW: each segment written once as the mean of x over its tokens; reads see the old state."""
        B, T, H = x.shape
        store = write.store
        o = self._read(self.stores, layer.index, layer.project_read(x))  # state from before the pass
        written = self._written(write, B, T, x.device)
        segments = cast(torch.Tensor, write.segments).to(x.device)  # writing() requires them for SSW
        if written is not None:
            segments = segments.masked_fill(~written, -1)
        tokens = segments >= 0
        if tokens.any():
            rows = torch.arange(B, device=x.device)[:, None].expand(B, T)
            span = int(segments.max()) + 1
            key = rows[tokens] * span + segments[tokens]  # row-major, then segment id
            order, slot = torch.unique(key, sorted=True, return_inverse=True)
            sums = x.new_zeros(len(order), H, dtype=torch.float32).index_add_(0, slot, x[tokens].float())
            counts = torch.bincount(slot, minlength=len(order)).unsqueeze(-1)
            means = sums / counts  # [segments, H]
            if self._rows is None:  # one shared state: every segment of every row, in order
                means, present = means.unsqueeze(0), None  # [1, segments, H]
                S0 = self._states[store][layer.index].unsqueeze(0)
            else:  # a state per row: row b's segments, in order, padded to the longest row
                self._check_rows(B)
                owner = order // span
                per_row = torch.bincount(owner, minlength=B)
                start = torch.cumsum(per_row, 0) - per_row
                position = torch.arange(len(order), device=x.device) - start[owner]
                present = torch.zeros(B, int(per_row.max()), dtype=torch.bool, device=x.device)
                present[owner, position] = True
                padded_means = means.new_zeros(B, present.shape[1], H)
                padded_means[owner, position] = means
                means = padded_means
                S0 = self._states[store][layer.index]
            _, k, v, beta, log_lam = layer.project(means)
            if present is not None:  # absent segments: β = 0, λ = 1 (no change)
                keep = present[..., None, None]
                k, v, beta, log_lam = (torch.where(keep, t, 0.0) for t in (k, v, beta, log_lam))
            q = torch.zeros_like(k)  # the reads of this scan are not used
            _, S = delta_rule_chunked(q, k, v, beta, S0, log_lam=log_lam, chunk_size=self.config.chunk_size)
            self._states[store][layer.index] = S[0] if self._rows is None else S
            self._nonzero.add(store)
        return o

    def _check_rows(self, batch: int) -> None:
        if batch != self._rows:
            raise ValueError(
                f"this memory holds {self._rows} independent rows (reset(rows=...)), "
                f"but the forward has a batch of {batch}"
            )

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
