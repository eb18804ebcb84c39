"""The gated delta rule with read-before-write, in three forms that agree.

- ``delta_rule_naive``: one token at a time, as the paper writes it. Slow and obviously
  correct; it is the oracle every fast path is tested against.
- ``delta_rule_chunked``: whole sequences without a Python loop over tokens. Each chunk
  is solved with one unit-lower-triangular solve; chunks are then joined by a parallel
  scan over per-chunk affine maps of the state.
- ``delta_rule_step``: one token, for decoding.

Shapes (B batch, T tokens, h state heads, r rank):
    q, k    [B, T, h, r]   read and write keys, unit vectors per head
    v       [B, T, h, r]   values, one per state row
    beta    [B, T, h, r]   write strength per state row, in [0, 1]
    log_lam [B, T, h, r]   log of the keep gate λ; defaults to log(1 - β) (coupled gates)
    S       [B, h, r, r]   the state; row i is written with v[..., i] and gated by β[..., i]

For each head and each row i, for t = 1..T:
    o_t[i]    = S_{t-1}[i, :] · q_t                                    (read before write)
    S_t[i, :] = λ_t[i] S_{t-1}[i, :] + β_t[i] (v_t[i] - (S_{t-1} k_t)[i]) k_tᵀ

A token never reads its own write. Tokens with β = 0 and log λ = 0 leave S unchanged,
which is how padding and unwritten tokens are expressed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["delta_rule_naive", "delta_rule_chunked", "delta_rule_step", "LOG_LAM_FLOOR"]

# λ = 0 exactly (β saturated at 1) has log λ = -inf; the fast path clamps it here instead.
# exp(-200) ≈ 1e-87 is zero next to anything a state holds, and keeps exponents finite.
LOG_LAM_FLOOR = -200.0


def delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    S: torch.Tensor,
    log_lam: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the gated delta rule.

    Args: q, k, v, beta, log_lam ``[B, h, r]``; S ``[B, h, r, r]``.
    Returns: (o ``[B, h, r]`` read from S before the write, S' ``[B, h, r, r]``).
    """
    lam = 1.0 - beta if log_lam is None else log_lam.exp()
    o = (S @ q.unsqueeze(-1)).squeeze(-1)  # [B, h, r]
    prediction = (S @ k.unsqueeze(-1)).squeeze(-1)  # (S k)_i, [B, h, r]
    error = beta * (v - prediction)  # [B, h, r]
    S_next = lam.unsqueeze(-1) * S + error.unsqueeze(-1) * k.unsqueeze(-2)  # [B, h, r, r]
    return o, S_next


def delta_rule_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    S0: torch.Tensor | None = None,
    log_lam: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the recurrence token by token (the test oracle).

    Returns (o ``[B, T, h, r]``, S_T ``[B, h, r, r]``).
    """
    B, T, h, r = q.shape
    S = q.new_zeros(B, h, r, r) if S0 is None else S0
    lam = 1.0 - beta if log_lam is None else log_lam.exp()
    reads = []
    for t in range(T):
        q_t, k_t, v_t, beta_t, lam_t = q[:, t], k[:, t], v[:, t], beta[:, t], lam[:, t]  # [B, h, r]
        reads.append(torch.einsum("bhij,bhj->bhi", S, q_t))  # o_t[i] = S_{t-1}[i, :] · q_t
        error = beta_t * (v_t - torch.einsum("bhij,bhj->bhi", S, k_t))  # β_t[i] (v_t[i] - (S_{t-1} k_t)[i])
        S = lam_t.unsqueeze(-1) * S + torch.einsum("bhi,bhj->bhij", error, k_t)
    o = torch.stack(reads, dim=1) if reads else q.new_zeros(B, 0, h, r)
    return o, S


def _to_chunks_shared(x: torch.Tensor, n: int, C: int) -> torch.Tensor:
    """[B, n*C, h, r] -> [B, h, n, C, r] (one vector per token, shared by all rows)."""
    B, _, h, r = x.shape
    return x.reshape(B, n, C, h, r).permute(0, 3, 1, 2, 4)


def _to_chunks_rowwise(x: torch.Tensor, n: int, C: int) -> torch.Tensor:
    """[B, n*C, h, r] -> [B, h, r, n, C] (one scalar per token and state row)."""
    B, _, h, r = x.shape
    return x.reshape(B, n, C, h, r).permute(0, 3, 4, 1, 2)


def _apply(A: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The affine map s -> A s + c on a batch of vectors: A [..., r, r], c and s [..., r]."""
    return (A @ s.unsqueeze(-1)).squeeze(-1) + c


def _scan_affine(A: torch.Tensor, c: torch.Tensor, s0: torch.Tensor) -> torch.Tensor:
    """States at the start of every chunk, given chunk maps s_end = A s_start + c.

    A [..., n, r, r], c [..., n, r], s0 [..., r]  ->  s_start [..., n, r].
    Pairs of neighbouring maps are composed and the half-length scan recurses, so the
    work is about 2n small products in log2(n) vectorised levels.
    """
    n = A.shape[-3]
    if n == 1:
        return s0.unsqueeze(-2)
    if n % 2:  # pad with the identity map; its output is dropped below
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A[..., :1, :, :])
        A = torch.cat([A, eye], dim=-3)
        c = torch.cat([c, torch.zeros_like(c[..., :1, :])], dim=-2)
    A_even, A_odd = A[..., 0::2, :, :], A[..., 1::2, :, :]
    c_even, c_odd = c[..., 0::2, :], c[..., 1::2, :]
    pair_A = A_odd @ A_even  # [..., n/2, r, r]
    pair_c = _apply(A_odd, c_odd, c_even)  # [..., n/2, r]
    s_even = _scan_affine(pair_A, pair_c, s0)  # start of each pair
    s_odd = _apply(A_even, c_even, s_even)
    return torch.stack([s_even, s_odd], dim=-2).flatten(-3, -2)[..., :n, :]


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    S0: torch.Tensor | None = None,
    log_lam: torch.Tensor | None = None,
    chunk_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast path: the same result as ``delta_rule_naive`` without a loop over tokens.

    Each state row s (a vector of r) follows s_t = λ_t s_{t-1} + e_t k_t with the scalar
    error e_t = β_t (v_t - s_{t-1}·k_t). Inside a chunk of C tokens starting from s_0,
    with D[t, j] = Π_{m=j+1..t} λ_m and γ_t = D[t, 0]:

        e_t + β_t Σ_{j<t} D[t-1, j] (k_t·k_j) e_j = β_t (v_t - γ_{t-1} k_t·s_0)

    a unit lower-triangular system, solved for its v part and its s_0 part at once
    (e = e_v - E_s s_0). The end-of-chunk state is affine in s_0,

        s_end = γ_C s_0 + Σ_j D[C, j] e_j k_j  =  A s_0 + c,

    a scan over the n chunk maps gives every chunk its s_0, and then the reads are

        o_t = Σ_{j<t} D[t-1, j] (q_t·k_j) e_j + γ_{t-1} q_t·s_0.

    Cumulative log-gates are formed in float64, so β near 1 (λ near 0) loses nothing.
    Returns (o ``[B, T, h, r]``, S_T ``[B, h, r, r]``).
    """
    B, T, h, r = q.shape
    if S0 is None:
        S0 = q.new_zeros(B, h, r, r)
    if T == 0:
        return q.new_zeros(B, 0, h, r), S0
    if log_lam is None:
        log_lam = torch.log1p(-beta)
    log_lam = log_lam.clamp(min=LOG_LAM_FLOOR)

    C = max(1, min(chunk_size, T))
    n = math.ceil(T / C)
    pad = n * C - T
    if pad:  # padded tokens: β = 0, λ = 1, k = q = 0 -- they change nothing
        q, k, v, beta, log_lam = (F.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, beta, log_lam))

    dtype = q.dtype
    kc = _to_chunks_shared(k, n, C)  # [B, h, n, C, r]
    qc = _to_chunks_shared(q, n, C)  # [B, h, n, C, r]
    vc = _to_chunks_rowwise(v, n, C)  # [B, h, R, n, C]   (R = r state rows)
    bc = _to_chunks_rowwise(beta, n, C)  # [B, h, R, n, C]
    G = _to_chunks_rowwise(log_lam, n, C).double().cumsum(-1)  # Σ_{m≤t} log λ_m, [B, h, R, n, C]
    G_prev = F.pad(G[..., :-1], (1, 0))  # Σ_{m≤t-1} log λ_m

    # Matrices over (t, j) are built transposed, as [.., j, t], so that their .mT views are
    # column-major and LAPACK's triangular solve reads them without a copy.
    # Dᵀ[j, t] = D[t-1, j], meaningful for j < t: [B, h, R, n, C, C]. Exponents are clamped
    # to [log(tiny), 0]: no denormals (slow on CPU) and no overflow in the unused triangle.
    floor = math.log(torch.finfo(dtype).tiny) + 1.0
    decay_prev_T = (G_prev.unsqueeze(-2) - G.unsqueeze(-1)).to(dtype).clamp_(floor, 0.0).exp_()
    gamma_prev = G_prev.exp().to(dtype)  # γ_{t-1}, [B, h, R, n, C]
    gamma_last = G[..., -1].exp().to(dtype)  # γ_C, [B, h, R, n]
    decay_to_end = (G[..., -1:] - G).exp().to(dtype)  # D[C, j], [B, h, R, n, C]

    # (k_j·k_t, k_j·q_t) weighted by the decay, for every row: [B, h, R, n, 2, C(j), C(t)]
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1)
    kq_T = kc.unsqueeze(-3) @ torch.stack([kc, qc], dim=-3).transpose(-1, -2)  # [B, h, n, 2, C, C]
    weighted_T = decay_prev_T.unsqueeze(-3) * kq_T.unsqueeze(2)
    system = weighted_T[..., 0, :, :].mul_(bc.unsqueeze(-2)).mT  # I + diag(β) (D ∘ KKᵀ) once the
    system.diagonal(dim1=-2, dim2=-1).add_(1.0)  # diagonal is set: unit lower-triangular
    read_weights = weighted_T[..., 1, :, :].mT.masked_fill_(~strictly_lower, 0.0)  # D ∘ QKᵀ, j < t
    rhs_T = torch.cat([(bc * vc).unsqueeze(-2), (bc * gamma_prev).unsqueeze(-2) * kc.unsqueeze(2).mT], dim=-2)
    solution = torch.linalg.solve_triangular(system, rhs_T.mT, upper=False, unitriangular=True)
    e_v, E_s = solution[..., 0], solution[..., 1:]  # [B, h, R, n, C], [B, h, R, n, C, r]

    eye_r = torch.eye(r, dtype=dtype, device=q.device)
    A = gamma_last[..., None, None] * eye_r - torch.einsum(
        "bhnjp,bhRnja->bhRnpa", kc, decay_to_end.unsqueeze(-1) * E_s
    )  # [B, h, R, n, r, r]
    c = torch.einsum("bhnjp,bhRnj->bhRnp", kc, decay_to_end * e_v)  # [B, h, R, n, r]
    s_start = _scan_affine(A, c, S0.to(dtype))  # [B, h, R, n, r]
    S_T = _apply(A[..., -1, :, :], c[..., -1, :], s_start[..., -1, :])  # [B, h, R, r]

    e = e_v - (E_s @ s_start.unsqueeze(-1)).squeeze(-1)  # the true errors, [B, h, R, n, C]
    o = (read_weights @ e.unsqueeze(-1)).squeeze(-1) + gamma_prev * torch.einsum(
        "bhnjp,bhRnp->bhRnj", qc, s_start
    )  # [B, h, R, n, C]
    o = o.permute(0, 3, 4, 1, 2).reshape(B, n * C, h, r)[:, :T]  # [B, T, h, r]
    return o, S_T
