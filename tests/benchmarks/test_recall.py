"""benchmarks/recall.py: its language has the properties the benchmark rests on, and a
``--quick`` run in a subprocess prints the whole table, with (b′) identical to (b).

Nothing is timed and no accuracy is asserted: the quick run trains for a few steps only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "recall.py"


@pytest.fixture(scope="module")
def recall():
    spec = importlib.util.spec_from_file_location("recall_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_keys_share_value_sets_and_sixteen_facts_fit(recall):
    vocab = recall.Vocab()
    assert len(vocab.keys) >= recall.MAX_K >= 8
    for family, (keys, values) in recall.FAMILIES.items():
        assert len(keys) >= 2, f"{family}: a family of one key would make values give keys away"
        assert len(set(values)) == len(values)
    assert len(set(vocab.words)) == len(vocab.words)


def test_the_latest_assignment_is_the_answer(recall):
    vocab = recall.Vocab()
    rng = random.Random(0)
    stories = [recall.make_story(vocab, k, rng) for k in recall.KS for _ in range(40)]
    assert any(s.reassigned for s in stories) and any(not s.reassigned for s in stories)
    for story in stories:
        last = {}
        for line in story.lines:
            for i, token in enumerate(line[:-2]):
                if token in vocab.family_of and line[i + 1] in (vocab["="], vocab[":"]):
                    last[token] = line[i + 2]
        assert last == dict(story.facts), "every fact line assigns a key; the last one is the answer"
        for key in story.reassigned:
            values = vocab.values_of[vocab.family_of[key]]
            assert len([line for line in story.lines if key in line and line[-2] in values]) >= 2


def test_binding_queries_have_a_same_family_key_with_another_value(recall):
    vocab = recall.Vocab()
    rng = random.Random(1)
    for story in (recall.make_story(vocab, 8, rng) for _ in range(50)):
        facts = dict(story.facts)
        for key in story.binding(vocab):
            family = vocab.family_of[key]
            assert any(vocab.family_of[k] == family and v != facts[key] for k, v in facts.items() if k != key)


def test_backbone_histories_draw_keys_from_few_families(recall):
    """The backbone trains on histories whose keys share families (so binding is what pays);
    the evaluation episodes draw from every family."""
    vocab = recall.Vocab()
    rng = random.Random(4)
    for k in range(1, recall.MAX_K + 1):
        for _ in range(20):
            story = recall.backbone_story(vocab, k, rng)
            families = {vocab.family_of[key] for key, _ in story.facts}
            assert len(story.facts) == k
            assert len(families) <= min(len(recall.FAMILIES), -(-k // 6) + 1)
    spread = {len({vocab.family_of[key] for key, _ in recall.make_story(vocab, 8, rng).facts}) for _ in range(50)}
    assert max(spread) == len(recall.FAMILIES)
    with pytest.raises(ValueError, match="fewer than K"):
        recall.make_story(vocab, 7, rng, families=1)


def test_quick_run_prints_the_table_and_replays_identically(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--seed", "3", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=env,  # a hang guard, not a time limit: a loaded machine is slow
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout
    for row in (
        "chance", "(a) backbone, query alone", "(c) backbone, history in context", "(b) δ-mem TSW",
        "(b) δ-mem SSW", "(b) δ-mem MSW", "(b-overwrite)", "binding-only", "(b′)", "control: zero state",
        "control: another episode's state", "wall time",
    ):
        assert row in table, f"{row!r} missing from the table:\n{table}"
    header = next(line for line in table.splitlines() if line.startswith("| row |"))
    assert [c.strip() for c in header.split("|")[2:7]] == ["K=1", "K=2", "K=4", "K=8", "K=16"]
    assert (tmp_path / "recall.md").read_text().startswith(header)

    result = json.loads((tmp_path / "recall.json").read_text())
    assert set(result["b"]) == {"TSW", "SSW", "MSW"}
    assert result["headline"] in result["b"]
    assert all(result["replay"]["identical"].values()), "(b′) must give exactly (b)'s predictions"
    assert result["replay"]["backbone_identical"]
    assert all(v["backbone_identical"] for v in result["variants"].values())
    for row in result["b"].values():
        assert set(row) == {"1", "2", "4", "8", "16"}
        assert all(0.0 <= cell["accuracy"] <= 1.0 and 0.1 < cell["chance"] < 0.2 for cell in row.values())
