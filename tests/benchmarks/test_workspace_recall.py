"""benchmarks/workspace_recall.py: the task's text and tokenizer fit both of the server's prompt
shapes, and a tiny run goes through the real server end to end.

The tiny run trains for a few steps only, so no accuracy is asserted; what is asserted holds
for any adapter: every write the server reports has the tokens of the framing the adapter was
trained on (the run stops otherwise), a restart answers exactly as before, and after a reset
the answers are the no-memory ones.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def modules():
    names = ("served_task", "served_model", "workspace_recall")
    yield tuple(load(name) for name in names)
    for name in names:
        sys.modules.pop(name, None)


def test_the_latest_assignment_is_the_answer_in_every_source(modules):
    task = modules[0]
    rng = random.Random(0)
    for source in task.SOURCES:
        for k in (1, 4, 16):
            ws = task.make_workspace(source, k, rng)
            text = "\n".join(task.framed(ws))
            for key, value in ws.facts:
                lines = [
                    line.lstrip("+") for line in text.splitlines() if line.lstrip("+").split(" ")[0].rstrip(":") == key
                ]
                assert lines and lines[-1].split()[-1] == value, (source, key, lines)
            assert [q.key for q in ws.queries] == [key for key, _ in ws.facts]
            assert all(q.prefix.endswith(f"{q.key} =") for q in ws.queries)


def test_values_are_one_token_and_the_chat_tokenizer_builds_chat_prompts(modules, tmp_path):
    task, model, _ = modules
    from transformers import AutoTokenizer

    from dmem_lsp.runtime.prompts import completion_prompt

    task.save_tokenizer(tmp_path / "fim", True)
    task.save_tokenizer(tmp_path / "chat", False)
    fim, chat = AutoTokenizer.from_pretrained(tmp_path / "fim"), AutoTokenizer.from_pretrained(tmp_path / "chat")
    for _, values in task.FAMILIES.values():
        for value in values:
            assert model.value_id(fim, value) == model.value_id(chat, value)
    query = task.make_workspace("conventions", 2, random.Random(1)).queries[0]
    assert completion_prompt(fim, query.prefix, query.suffix, 1536, 512).fim
    prompt = completion_prompt(chat, query.prefix, query.suffix, 1536, 512)
    assert not prompt.fim and chat.decode(prompt.input_ids).rstrip().endswith("<|im_start|>assistant")


def test_binding_queries_are_those_a_family_match_cannot_answer(modules):
    task = modules[0]
    facts = (("indent", "4"), ("tabwidth", "4"), ("retries", "2"), ("linter", "ruff"))
    ws = task.Workspace("debug", facts, frozenset(), {})
    # retries' family holds indent and tabwidth with 4, so the family alone cannot tell 2 from 4;
    # linter is its family's only key; indent and tabwidth each have retries' 2 beside them.
    assert task.binding(ws) == {"indent", "tabwidth", "retries"}
    assert task.binding(task.Workspace("debug", (("indent", "4"), ("tabwidth", "4")), frozenset(), {})) == set()


def test_in_context_scores_split_the_binding_queries(modules, tmp_path):
    task, model, _ = modules
    toks = model.tokenizers(tmp_path, 0)
    backbone = model.build_backbone(len(toks["fim"]), 0, hidden=16, heads=2, layers=1)
    rng = random.Random(3)
    alone = [task.make_workspace(source, 1, rng) for source in task.SOURCES]
    scores = model.in_context_scores(backbone, toks, alone)
    assert set(scores) == {"fim", "chat"}
    assert all(cells["binding"] is None and 0 <= cells["all"] <= 1 for cells in scores.values())
    crowded = task.Workspace("debug", (("indent", "4"), ("retries", "2")), frozenset(), {},
                             steps=("indent = 4", "retries = 2"),
                             queries=(task.make_query("indent", "4", 0, rng), task.make_query("retries", "2", 1, rng)))
    both = model.in_context_scores(backbone, toks, [*alone, crowded])
    for shape, cells in both.items():
        assert cells["binding"] in (0.0, 0.5, 1.0)  # two binding queries
        assert cells["all"] * 5 == pytest.approx(scores[shape]["all"] * 3 + cells["binding"] * 2)


def test_a_marked_drill_asks_every_fact_apart_from_the_history(modules, tmp_path):
    task, model, _ = modules
    tokenizer = model.tokenizers(tmp_path, 0)["fim"]
    ws = task.make_workspace("debug", 3, random.Random(2))
    ids, weights = model.marked_drill(tokenizer, ws, random.Random(0), asks=2)
    eos = tokenizer.eos_token
    text = tokenizer.decode(ids)
    history, _, asks = text.partition("\n?")
    assert history == eos + "\n".join(task.framed(ws))
    lines = ("?" + asks).split(eos)
    assert lines[-1] == "" and len(lines) - 1 == 3 * (1 + 2)  # every fact once, then 2·K more
    latest = dict(ws.facts)
    assert all(line.startswith("?") and latest[line[1:].split(" = ")[0]] == line.split(" = ")[1] for line in lines[:-1])
    assert weights == [1] * len(ids)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("target", "switched"), [(0.0, 100), (1.01, None)])
def test_the_lookup_phase_ends_when_the_raw_lookup_binds(modules, tmp_path, target, switched):
    _, model, _ = modules
    toks = model.tokenizers(tmp_path, 0)
    recipe = model.Recipe(max_k=2, backbone_steps=101, backbone_batch=2, hidden=16, heads=2, layers=1,
                          lookup_first=target, lookup_batch=2, drill_format="marked", drill_asks=1)
    backbone = model.build_backbone(len(toks["fim"]), 0, recipe.hidden, recipe.heads, recipe.layers)
    result = model.train_backbone(backbone, toks, recipe, 0)
    assert result["lookup_steps"] == switched
    step, _, scores = result["curve"][0]
    assert step == 100 and 0 <= scores["raw_lookup_binding"] <= 1


@pytest.mark.timeout(300)
def test_a_lookup_that_does_not_bind_starts_over_from_another_init_then_fails_loudly(modules, tmp_path):
    _, model, _ = modules
    recipe = model.Recipe(max_k=2, backbone_steps=400, backbone_batch=2, hidden=16, heads=2, layers=1,
                          lookup_first=1.01, lookup_batch=2, drill_format="marked", drill_asks=1,
                          lookup_max_steps=100, backbone_attempts=2, variants=())
    toks = model.tokenizers(tmp_path, 0)
    first = model.train_backbone(model.build_backbone(len(toks["fim"]), 0, 16, 2, 1), toks, recipe, 0)
    assert (first["bound"], first["steps"], first["lookup_steps"]) == (False, 100, None)
    assert model.attempt_seed(0, 0) == 0 and model.attempt_seed(0, 1) != 0  # the first try is the seed's own
    with pytest.raises(RuntimeError, match="did not bind within 100 steps in 2 attempts"):
        model.build_model(tmp_path / "built", 0, recipe=recipe)
    assert not (tmp_path / "built" / "backbone" / "model.safetensors").exists()


@pytest.mark.timeout(1500)
def test_a_tiny_run_through_the_server(modules, tmp_path):
    _, model, recall = modules
    recipe = model.Recipe(max_k=1, backbone_steps=10, backbone_batch=4, adapter_episodes=((1, 8),), variants=("msw",))
    result = recall.run_seed(0, tmp_path, (1,), 1, recipe, shapes=("fim",))
    row = result["fim-msw"]
    assert row["b"]["all"]["queries"] == 3  # one workspace per source, K = 1
    assert row["b_prime"] == {"identical": 6, "queries": 6}, "a restart must answer exactly as before (twins too)"
    assert row["reset_is_no_memory"] == {"identical": 6, "queries": 6}
    assert row["other_workspace"]["all"]["queries"] == 3
