"""The chunked fast path and the decode step against the naive per-token reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memory.delta_rule import delta_rule_chunked, delta_rule_naive, delta_rule_step

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}  # relative to the largest magnitude
GATE_LOGITS = {"beta~0": -14.0, "beta~0.2": -1.5, "mixed": 0.0, "beta~1": 14.0}


def make_inputs(B, T, h, r, dtype, gate_logit, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q = F.normalize(torch.tanh(randn(B, T, h, r)), dim=-1)
    k = F.normalize(torch.tanh(randn(B, T, h, r)), dim=-1)
    v = randn(B, T, h, r)
    z = randn(B, T, h, r) * spread + gate_logit
    S0 = randn(B, h, r, r)
    return [t.to(dtype) for t in (q, k, v, torch.sigmoid(z), F.logsigmoid(-z), S0)]


def relative_error(got, want):
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gate", list(GATE_LOGITS), ids=list(GATE_LOGITS))
@pytest.mark.parametrize("T", [1, 5, 8, 16, 37, 200], ids=lambda T: f"T{T}")
@pytest.mark.parametrize("heads", [1, 3], ids=lambda h: f"h{h}")
def test_chunked_matches_naive(dtype, gate, T, heads):
    q, k, v, beta, log_lam, S0 = make_inputs(2, T, heads, 8, dtype, GATE_LOGITS[gate])
    o_ref, S_ref = delta_rule_naive(q, k, v, beta, S0, log_lam=log_lam)
    for chunk_size in (3, 8, 16):  # chunks that are and are not filled by T
        o, S = delta_rule_chunked(q, k, v, beta, S0, log_lam=log_lam, chunk_size=chunk_size)
        assert o.dtype == dtype and S.dtype == dtype
        assert relative_error(o, o_ref) < TOLERANCE[dtype], chunk_size
        assert relative_error(S, S_ref) < TOLERANCE[dtype], chunk_size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("gate", list(GATE_LOGITS), ids=list(GATE_LOGITS))
def test_decode_steps_match_naive(dtype, gate):
    q, k, v, beta, log_lam, S = make_inputs(2, 40, 2, 8, dtype, GATE_LOGITS[gate], seed=1)
    o_ref, S_ref = delta_rule_naive(q, k, v, beta, S, log_lam=log_lam)
    reads = []
    for t in range(q.shape[1]):
        o_t, S = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], S, log_lam=log_lam[:, t])
        reads.append(o_t)
    assert relative_error(torch.stack(reads, 1), o_ref) < TOLERANCE[dtype]
    assert relative_error(S, S_ref) < TOLERANCE[dtype]


def test_coupled_gate_default_is_one_minus_beta():
    q, k, v, beta, log_lam, S0 = make_inputs(1, 30, 1, 8, torch.float64, 0.0)
    with_log = delta_rule_chunked(q, k, v, beta, S0, log_lam=log_lam)
    without = delta_rule_chunked(q, k, v, beta, S0)
    naive = delta_rule_naive(q, k, v, beta, S0)
    for a, b in zip(with_log, without, strict=True):
        assert relative_error(a, b) < 1e-10
    assert relative_error(without[1], naive[1]) < 1e-10


def test_saturated_gates_are_exact_limits():
    """β = 1 exactly (λ = 0): the row is replaced; β = 0: nothing changes."""
    q, k, v, _, _, S0 = make_inputs(1, 12, 1, 8, torch.float64, 0.0)
    ones, zeros = torch.ones_like(v), torch.zeros_like(v)
    o, S = delta_rule_chunked(q, k, v, ones, S0, chunk_size=5)
    o_ref, S_ref = delta_rule_naive(q, k, v, ones, S0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert relative_error(o, o_ref) < 1e-10 and relative_error(S, S_ref) < 1e-10
    o, S = delta_rule_chunked(q, k, v, zeros, S0, chunk_size=5)
    assert torch.equal(S, S0)


def test_read_before_write():
    """A token's read never sees its own write: the first read is S0 q exactly."""
    q, k, v, beta, log_lam, S0 = make_inputs(1, 9, 1, 8, torch.float64, 5.0)
    o, _ = delta_rule_chunked(q, k, v, beta, S0, log_lam=log_lam)
    assert torch.allclose(o[:, 0], torch.einsum("bhij,bhj->bhi", S0, q[:, 0]), rtol=0, atol=1e-12)
    o_zero, _ = delta_rule_chunked(q, k, v, beta, torch.zeros_like(S0), log_lam=log_lam)
    assert torch.equal(o_zero[:, 0], torch.zeros_like(o_zero[:, 0]))


def test_gradients_match_naive():
    """Training backpropagates through the scan: the fast path's gradients are the oracle's."""
    inputs = make_inputs(1, 21, 2, 4, torch.float64, -0.5, seed=3)
    q, k, v, beta, log_lam, S0 = (t.clone().requires_grad_() for t in inputs)
    weights = torch.randn(1, 21, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def grads(fn):
        o, S = fn(q, k, v, beta, S0, log_lam=log_lam)
        ((o * weights).sum() + S.square().sum()).backward()
        out = [t.grad.clone() for t in (q, k, v, beta, log_lam, S0)]
        for t in (q, k, v, beta, log_lam, S0):
            t.grad = None
        return out

    fast = grads(lambda *a, **kw: delta_rule_chunked(*a, **kw, chunk_size=4))
    for got, want in zip(fast, grads(delta_rule_naive), strict=True):
        assert relative_error(got, want) < 1e-9


def test_empty_sequence_keeps_state():
    q, k, v, beta, log_lam, S0 = make_inputs(1, 0, 1, 8, torch.float32, 0.0)
    o, S = delta_rule_chunked(q, k, v, beta, S0)
    assert o.shape == (1, 0, 1, 8) and torch.equal(S, S0)
