"""Independent rows, warm-up and schedules in ``memory.training`` (tiny models, CPU).

The batched loss of several episodes (each written into and read from a state of its own,
with different numbers of write passes, lengths and reads) equals writing and reading them
one by one, and differs when a row reads another episode's state; so does an episode whose
pieces name their stores (each written into its own store, as the server writes, which is not
writing them all into one); ``train`` with rows and a
cosine schedule learns, records what it did, and writes the adapter's prompt shape.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import memory
from memory.batching import history_passes, rows_loss, rows_tensors
from memory.episodes import Episode, EpisodeError, fingerprint
from memory.training import EpisodeLoss, TrainOptions, episode_tensors, learning_rate, train
from tests.memory.helpers import strengthen
from tests.memory.test_training import backbone_tensors, recall_episodes
from tests.tiny_models import load_tiny_model

VARIANTS = {
    "TSW": memory.DeltaMemConfig(),
    "SSW": memory.DeltaMemConfig(write="segment"),
    "MSW": memory.DeltaMemConfig(state_heads=2),
}


def episodes(seed: int = 0) -> list[Episode]:
    """Three episodes of different shapes: 1, 3 and 2 pieces; one read, three reads, one."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> tuple[int, ...]:
        return tuple(torch.randint(3, 300, (n,), generator=g).tolist())

    return [
        Episode(history=(ids(7),), query=ids(4), target=ids(2)),
        Episode(
            history=(ids(5), ids(9), ids(3)), query=ids(6), target=ids(1), reads=((ids(3), ids(2)), (ids(5), ids(3)))
        ),
        Episode(history=(ids(4), ids(11)), query=ids(2), target=ids(4)),
    ]


def retold(episode: Episode, *reads: tuple[tuple[int, ...], tuple[int, ...]], stores: tuple[str, ...] | None = None):
    """``episode``'s history, written into ``stores`` (default: its own), then read by ``reads``
    (default: its first read alone); no source. Every episode made from another is made here."""
    (query, target), *more = reads or episode.queries[:1]
    stores = episode.stores if stores is None else stores
    return Episode(episode.history, query, target, reads=tuple(more), stores=stores)


def loss_of(mem: memory.Memory, episodes: Episode | list[Episode], chunk_tokens: int = 0) -> torch.Tensor:
    """``EpisodeLoss`` of one episode (the single-row path, ``episode_tensors``) or of a list of
    them (independent rows, ``rows_tensors``), the history's last 1024 tokens written."""
    if isinstance(episodes, Episode):
        segmented = mem.config.write == "segment"
        return EpisodeLoss(mem)(*episode_tensors(episodes, 1024, segmented, "cpu", chunk_tokens))
    return EpisodeLoss(mem)(rows_tensors(episodes, 1024, "cpu", chunk_tokens))


def strong_memory(model_dirs, variant: str) -> memory.Memory:
    """δ-mem of ``variant`` on the tiny Qwen3, its weights strong enough for states to matter."""
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), VARIANTS[variant])
    strengthen(mem)
    return mem


def one_by_one(mem: memory.Memory, batch: list[Episode], written: list[Episode], chunk_tokens: int) -> torch.Tensor:
    """Each episode's reads after writing ``written``'s history alone: the mean over all target tokens."""
    summed, total = torch.zeros(()), 0
    for episode, other in zip(batch, written, strict=True):
        for query, target in episode.queries:
            summed = summed + loss_of(mem, retold(other, (query, target)), chunk_tokens) * len(target)
            total += len(target)
    return summed / total


@pytest.mark.parametrize("chunk_tokens", [0, 4], ids=["one-pass", "passes-of-4"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_loss_is_the_episodes_one_by_one(model_dirs, variant, chunk_tokens):
    mem = strong_memory(model_dirs, variant)
    batch = episodes()
    with torch.no_grad():
        batched = loss_of(mem, batch, chunk_tokens)
        assert mem.rows is None, "the loss leaves one shared state per store behind"
        alone = one_by_one(mem, batch, batch, chunk_tokens)
        rows = rows_tensors(batch, 1024, "cpu", chunk_tokens)
        swapped = rows_loss(mem, dataclasses.replace(rows, episode_of=[(i + 1) % 3 for i in rows.episode_of]))
        crossed = one_by_one(mem, batch, batch[1:] + batch[:1], chunk_tokens)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(swapped, crossed, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched, swapped, rtol=1e-3), "rows read from the wrong episode would show"


STORES = (("edits",), ("conventions", "edits", "conventions"), ("edits", "debug"))
"""Per episode of ``episodes()``: the store of each piece (passes j go into different stores)."""


@pytest.mark.parametrize("chunk_tokens", [0, 4], ids=["one-pass", "passes-of-4"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pieces_are_written_into_their_stores_batched_as_one_by_one(model_dirs, variant, chunk_tokens):
    mem = strong_memory(model_dirs, variant)
    plain = episodes()
    batch = [retold(e, *e.queries, stores=stores) for e, stores in zip(plain, STORES, strict=True)]
    rows = rows_tensors(batch, 1024, "cpu", chunk_tokens)
    most = max(len(history_passes(e, 1024, chunk_tokens)) for e in batch)
    assert len(rows.passes) > most, "a pass j in two stores is two batches"
    with torch.no_grad():
        batched = EpisodeLoss(mem)(rows)
        alone = one_by_one(mem, batch, batch, chunk_tokens)
        one_store = loss_of(mem, plain, chunk_tokens)
        loss_of(mem, batch[2], chunk_tokens)
        states = mem.states()
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)  # agree to ~1e-6
    assert float((batched - one_store).abs()) > 1e-4, "writing every piece into one store would show (SSW: 6e-4)"
    assert not states["conventions"].any(), "episode 2 writes nothing into conventions"
    assert states["edits"].any() and states["debug"].any()


def test_an_episode_names_a_store_per_piece_or_none():
    episode = Episode(history=((1, 2), (3,)), query=(4,), target=(5,))
    assert fingerprint([episode]) != fingerprint([retold(episode, stores=("conventions", "edits"))])
    passes = history_passes(retold(episode, stores=("conventions", "edits")), 1024)
    assert passes == [([1, 2], [0, 0], "conventions"), ([3], [1], "edits")]
    assert history_passes(episode, 1024) == [([1, 2, 3], [0, 0, 1], None)]  # no stores: one pass, the first store
    with pytest.raises(EpisodeError, match="1 store names for 2 history pieces"):
        retold(episode, stores=("edits",))


def test_learning_rate_warms_up_then_follows_the_schedule():
    cosine = TrainOptions(lr=1.0, warmup_steps=4, schedule="cosine")
    warm = [learning_rate(cosine, s, 100) for s in range(4)]
    assert warm == [0.25, 0.5, 0.75, 0.5 * (1 + math.cos(math.pi * 3 / 100))]  # the cosine is under 1 by step 3
    assert learning_rate(cosine, 50, 100) == pytest.approx(0.5)
    assert learning_rate(cosine, 99, 100) < 0.01
    constant = TrainOptions(lr=0.1)
    assert {learning_rate(constant, s, 10) for s in range(10)} == {0.1}
    with pytest.raises(ValueError, match="schedule='linear'"):
        TrainOptions(schedule="linear")
    with pytest.raises(ValueError, match="rows=0"):
        TrainOptions(rows=0)
    with pytest.raises(ValueError, match="prompt='raw'"):
        TrainOptions(prompt="raw")


def test_training_with_rows_and_a_schedule_learns_and_records_it(model_dirs, tmp_path):
    model = load_tiny_model(model_dirs["qwen3"])
    torch.manual_seed(0)
    mem = memory.attach(model, memory.DeltaMemConfig())
    before = backbone_tensors(mem)
    data = recall_episodes(96)
    options = TrainOptions(
        steps=20, lr=1e-2, rows=4, warmup_steps=3, schedule="cosine", eval_every=20, progress=False, prompt="chat"
    )
    summary = train(mem, data[:64], data[64:], options, tmp_path / "run")
    assert summary["eval_loss_memory"] < summary["initial_eval_loss_memory"] - 0.3, summary
    assert (summary["rows"], summary["schedule"], summary["warmup_steps"]) == (4, "cosine", 3)
    assert summary["epochs"] == 1.25  # 20 steps × 4 rows over 64 episodes
    assert all(torch.equal(t, before[n]) for n, t in backbone_tensors(mem).items()), "the backbone changed"
    config = json.loads((tmp_path / "run" / memory.adapter_io.CONFIG_NAME).read_text())
    assert config["prompt"] == "chat"
    _, _, meta = memory.read_adapter(tmp_path / "run")  # the checksum covers it
    assert meta["prompt"] == "chat"


def test_episodes_with_several_reads_are_trained_and_fingerprinted(model_dirs, tmp_path):
    """The same read twice has the loss of one read; reads enter the data's fingerprint."""
    data = recall_episodes(8)
    with_reads = [retold(e, *e.queries, *e.queries) for e in data]  # the one read, twice
    assert fingerprint(with_reads) != fingerprint(data)
    assert fingerprint(data) == fingerprint([retold(e) for e in data])  # the source is not data
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    summary = train(mem, with_reads[:6], with_reads[6:], TrainOptions(steps=2, progress=False), tmp_path / "reads")
    assert summary["steps"] == 2 and summary["eval_loss_memory"] is not None
    with torch.no_grad():
        twice = loss_of(mem, with_reads[:1])
        once = loss_of(mem, data[0])
    torch.testing.assert_close(twice, once, rtol=1e-4, atol=1e-5)
