"""The math of one write pass through one layer: which tokens are written, and the new state.

``Memory`` (``memory.model``) keeps the stores and decides what a forward is; these functions
take the state and the layer's input explicitly and return what the pass computes, so they
know nothing of stores, hooks or pass modes. Shapes (B batch, T tokens, H hidden, h state
heads, r rank):

    x        [B, T, H]       the layer's input, the tensor q_proj receives
    written  [B, T] bool     which tokens are written (None: all of them)
    S        [h, r, r]       with ``shared``: one state, the rows of the batch one after another
             [B, h, r, r]    otherwise: a state per row, row b written into state b alone

- ``token_pass`` (TSW): every written token updates S by the gated delta rule
  (``memory.delta_rule``), each token reading before it writes.
- ``segment_pass`` (SSW): each segment is written once, as the mean of x over its tokens.
  It returns only the new state: the reads of an SSW pass see the state from before it.

Unwritten tokens (padding, segment id -1) get β = 0 and log λ = 0, which leaves S unchanged;
they are selected with ``torch.where``, not multiplied away, because padding may hold NaN.
"""

from __future__ import annotations

import torch

from .delta_rule import delta_rule_chunked, delta_rule_step
from .layer import DeltaMemLayer

__all__ = ["written_tokens", "token_pass", "segment_pass", "check_rows"]


def written_tokens(
    mask: torch.Tensor | None, segments: torch.Tensor | None, B: int, T: int, device: torch.device
) -> torch.Tensor | None:
    """[B, T] bool: which tokens of a forward are written (None: all of them).

    ``mask`` is the model forward's 2-D attention_mask [B, ≥T] (its last T columns are this
    forward's tokens; 0 = padding), ``segments`` [B, T] the pass's segment ids (-1: not
    written); either may be None.
    """
    written = None
    if mask is not None:
        if mask.dim() != 2 or mask.shape[0] != B or mask.shape[1] < T:
            raise ValueError(f"write passes need a 2-D attention_mask [batch, tokens]; got shape {tuple(mask.shape)}")
        written = mask[:, -T:].to(device).bool()
    if segments is not None:
        if tuple(segments.shape) != (B, T):
            raise ValueError(f"segments have shape {tuple(segments.shape)} but this forward has {(B, T)}")
        by_segment = segments.to(device) >= 0
        written = by_segment if written is None else written & by_segment
    return written


def check_rows(rows: int | None, batch: int) -> None:
    """ValueError unless a forward's batch matches the ``rows`` independent states."""
    if batch != rows:
        raise ValueError(
            f"this memory holds {rows} independent rows (reset(rows=...)), but the forward has a batch of {batch}"
        )


def token_pass(
    layer: DeltaMemLayer,
    x: torch.Tensor,
    S: torch.Tensor,
    written: torch.Tensor | None,
    *,
    shared: bool,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSW through ``layer``: x [B, T, H] -> (o [B, T, h, r] read before each write,
    q [B, T, h, r] the read keys, S' the state after the pass, shaped as S)."""
    B, T, _ = x.shape
    q, k, v, beta, log_lam = layer.project(x)  # [B, T, h, r] each
    if written is not None:  # unwritten tokens: β = 0, λ = 1 (no change)
        keep = written[..., None, None]  # torch.where, not a product: pads may hold NaN
        k, v, beta, log_lam = (torch.where(keep, t, 0.0) for t in (k, v, beta, log_lam))
    h, r = q.shape[-2:]
    if shared:  # one state: the rows one after another
        flat = [t.reshape(1, B * T, h, r) for t in (q, k, v, beta, log_lam)]  # [1, B·T, h, r]
        S0 = S.unsqueeze(0)  # [1, h, r, r]
    else:  # a state per row
        check_rows(S.shape[0], B)
        flat = [q, k, v, beta, log_lam]
        S0 = S  # [B, h, r, r]
    fq, fk, fv, fbeta, flog_lam = flat
    if fq.shape[1] == 1:  # decoding: one step
        o, S_next = delta_rule_step(fq[:, 0], fk[:, 0], fv[:, 0], fbeta[:, 0], S0, log_lam=flog_lam[:, 0])
        o = o.unsqueeze(1)
    else:
        o, S_next = delta_rule_chunked(fq, fk, fv, fbeta, S0, log_lam=flog_lam, chunk_size=chunk_size)
    return o.reshape(B, T, h, r), q, S_next[0] if shared else S_next


def segment_pass(
    layer: DeltaMemLayer,
    x: torch.Tensor,
    segments: torch.Tensor,
    written: torch.Tensor | None,
    S: torch.Tensor,
    *,
    shared: bool,
    chunk_size: int,
) -> torch.Tensor | None:
    """SSW through ``layer``: each segment of x [B, T, H] (ids ``segments`` [B, T], -1: not
    written) written once as the mean of x over its tokens, in order: row by row, then by
    segment id. Returns S', shaped as S, or None when no token is written (S unchanged)."""
    B, T, H = x.shape
    segments = segments.to(x.device)
    if written is not None:
        segments = segments.masked_fill(~written, -1)
    tokens = segments >= 0
    if not tokens.any():
        return None
    rows = torch.arange(B, device=x.device)[:, None].expand(B, T)
    span = int(segments.max()) + 1
    key = rows[tokens] * span + segments[tokens]  # row-major, then segment id
    order, slot = torch.unique(key, sorted=True, return_inverse=True)
    sums = x.new_zeros(len(order), H, dtype=torch.float32).index_add_(0, slot, x[tokens].float())
    counts = torch.bincount(slot, minlength=len(order)).unsqueeze(-1)
    means = sums / counts  # [segments, H]
    if shared:  # one state: every segment of every row, in order
        means, present = means.unsqueeze(0), None  # [1, segments, H]
        S0 = S.unsqueeze(0)
    else:  # a state per row: row b's segments, in order, padded to the longest row
        check_rows(S.shape[0], B)
        owner = order // span
        per_row = torch.bincount(owner, minlength=B)
        start = torch.cumsum(per_row, 0) - per_row
        position = torch.arange(len(order), device=x.device) - start[owner]
        present = torch.zeros(B, int(per_row.max()), dtype=torch.bool, device=x.device)
        present[owner, position] = True
        padded_means = means.new_zeros(B, present.shape[1], H)
        padded_means[owner, position] = means
        means = padded_means
        S0 = S
    _, k, v, beta, log_lam = layer.project(means)
    if present is not None:  # absent segments: β = 0, λ = 1 (no change)
        keep = present[..., None, None]
        k, v, beta, log_lam = (torch.where(keep, t, 0.0) for t in (k, v, beta, log_lam))
    q = torch.zeros_like(k)  # the reads of this scan are not used
    _, S_next = delta_rule_chunked(q, k, v, beta, S0, log_lam=log_lam, chunk_size=chunk_size)
    return S_next[0] if shared else S_next
