"""Independent rows (``reset(rows=B)``): many episodes in one forward, each as if alone."""

from __future__ import annotations

import pytest
import torch

import memory
from tests.memory.helpers import strengthen, token_ids
from tests.tiny_models import load_tiny_model

LENGTHS = (14, 9, 20)


def right_padded(sequences):
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    return ids, mask


def episodes(write: str):
    """Three histories of different lengths (with segment ids for SSW) and a query per history."""
    histories = [token_ids(1, n, seed=10 + i)[0] for i, n in enumerate(LENGTHS)]
    segments = [torch.arange(n) // 4 if write == "segment" else None for n in LENGTHS]
    if write == "segment":
        segments[1][2] = -1  # a token left out of every segment
    queries = token_ids(3, 6, seed=99)
    return histories, segments, queries


def write_alone(model, mem, history, segments, query):
    """The shared-state path, one episode at a time: the reference."""
    mem.reset()
    with mem.writing(store="edits", segments=None if segments is None else segments[None]):
        model(input_ids=history[None])
    state = mem.states()["edits"]
    return state, model(input_ids=query[None]).logits[0]


def write_rows(model, mem, histories, segments, queries):
    ids, mask = right_padded(histories)
    seg = None
    if segments[0] is not None:
        seg = torch.full(ids.shape, -1, dtype=torch.long)
        for row, s in enumerate(segments):
            seg[row, : len(s)] = s
    mem.reset(rows=len(histories))
    with mem.writing(store="edits", segments=seg):
        model(input_ids=ids, attention_mask=mask)
    return mem.states()["edits"], model(input_ids=queries).logits


@pytest.mark.parametrize("config", [
    memory.DeltaMemConfig(),
    memory.DeltaMemConfig(write="segment"),
    memory.DeltaMemConfig(rank=4, state_heads=3),
], ids=["TSW", "SSW", "MSW"])
def test_each_row_is_written_and_read_as_if_alone(model_dirs, config):
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, config)
    strengthen(mem)
    histories, segments, queries = episodes(config.write)
    with torch.no_grad():
        alone = [write_alone(model, mem, *e) for e in zip(histories, segments, queries, strict=True)]
        states, logits = write_rows(model, mem, histories, segments, queries)
    assert mem.rows == 3
    assert states.shape == (2, 3, config.state_heads, config.rank, config.rank)  # [layers, rows, h, r, r]
    for row, (state, row_logits) in enumerate(alone):
        assert state.abs().max() > 0
        assert torch.allclose(states[:, row], state, rtol=1e-5, atol=1e-5)
        assert torch.allclose(logits[row], row_logits, rtol=1e-4, atol=1e-4)
    # the rows did not mix: another row's state is far from this one's
    assert not torch.allclose(states[:, 0], states[:, 1], atol=1e-3)


def test_select_rows_and_gradients_equal_the_episodes_one_by_one(model_dirs):
    """Several queries per written episode (select_rows); the batched loss's gradient is the
    sum of each episode's gradient computed alone: batched training trains the same thing."""
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem, scale=0.2)
    for param in model.parameters():
        param.requires_grad_(False)
    params = list(mem.parameters())
    for param in params:
        param.requires_grad_(True)
    histories, _, _ = episodes("token")
    owner = [0, 0, 1, 2, 2, 2]  # six queries: two for episode 0, one for 1, three for 2
    queries = token_ids(len(owner), 5, seed=7)
    targets = torch.randint(0, 300, (len(owner),), generator=torch.Generator().manual_seed(1))

    def loss_of(logits, rows):
        return torch.nn.functional.cross_entropy(logits[:, -1], targets[rows], reduction="sum")

    expected = [torch.zeros_like(p) for p in params]
    for episode, history in enumerate(histories):
        rows = [j for j, o in enumerate(owner) if o == episode]
        mem.reset()
        with mem.writing(store="edits"):
            model(input_ids=history[None])
        loss = loss_of(model(input_ids=queries[rows]).logits, rows)
        for total, grad in zip(expected, torch.autograd.grad(loss, params), strict=True):
            total += grad
    ids, mask = right_padded(histories)
    mem.reset(rows=3)
    with mem.writing(store="edits"):
        model(input_ids=ids, attention_mask=mask)
    mem.select_rows(owner)
    assert mem.rows == len(owner)
    loss = loss_of(model(input_ids=queries).logits, list(range(len(owner))))
    batched = torch.autograd.grad(loss, params)
    assert any(g.abs().max() > 0 for g in batched)
    for got, want in zip(batched, expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    mem.reset()
    assert mem.rows is None and mem.states()["edits"].shape == (2, 1, 8, 8)


def test_rows_errors_are_clear(model_dirs):
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    with pytest.raises(RuntimeError, match="reset\\(rows=B\\)"):
        mem.select_rows([0])
    with pytest.raises(ValueError, match="positive integer"):
        mem.reset(rows=0)
    with pytest.raises(ValueError, match="every store"):
        mem.reset("edits", rows=2)
    mem.reset(rows=2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="2 independent rows.*batch of 3"):
            with mem.writing(store="edits"):
                model(input_ids=token_ids(3, 5))
        with mem.writing(store="edits"):
            model(input_ids=token_ids(2, 5))
        with pytest.raises(ValueError, match="2 independent rows.*batch of 1"):
            model(input_ids=token_ids(1, 5))
    with pytest.raises(ValueError, match="out of range"):
        mem.select_rows([0, 2])
    with pytest.raises(RuntimeError, match="reset\\(\\) first"):
        mem.load_states({"edits": torch.zeros(2, 1, 8, 8)})
    mem.reset("edits")  # zeroes one store and keeps the rows
    assert mem.rows == 2 and mem.states()["edits"].shape == (2, 2, 1, 8, 8)
