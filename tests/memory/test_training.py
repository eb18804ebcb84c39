"""Episode training on tiny models (CPU): memory learns to recall, the backbone never changes,
only δ-mem gets gradients, a resumed run equals an uninterrupted one, the curve is written."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import pytest
import torch

import memory
from memory.checkpoints import CheckpointError
from memory.curves import COLUMNS
from memory.episodes import Episode, EpisodeError, conversation_episode, read_conversations, split_episodes
from memory.training import EpisodeLoss, TrainOptions, episode_tensors, evaluate, freeze_backbone, train
from tests.memory.helpers import strengthen, token_ids
from tests.tiny_models import load_tiny_model

VALUES = list(range(100, 108))


def recall_episodes(count: int, seed: int = 0) -> list[Episode]:
    """History: four filler tokens, then a random value four times; query: fixed tokens;
    target: the value. Without memory the value cannot be known."""
    g = torch.Generator().manual_seed(seed)
    episodes = []
    for i in range(count):
        value = VALUES[int(torch.randint(len(VALUES), (1,), generator=g))]
        filler = torch.randint(3, 90, (4,), generator=g).tolist()
        history = ((*filler, *[value] * 4),)
        episodes.append(Episode(history=history, query=(5, 6, 7, 8), target=(value,), source=f"kv{i}"))
    return episodes


def fresh_memory(model_dirs, seed: int = 0) -> memory.Memory:
    model = load_tiny_model(model_dirs["qwen3"])
    torch.manual_seed(seed)
    return memory.attach(model, memory.DeltaMemConfig())


def backbone_tensors(mem: memory.Memory) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in mem.model.state_dict().items() if ".delta_mem." not in name}


def test_training_teaches_memory_to_recall_and_leaves_the_backbone_alone(model_dirs, tmp_path, monkeypatch):
    mem = fresh_memory(model_dirs)
    before = backbone_tensors(mem)
    optimized: list[torch.nn.Parameter] = []
    adamw = torch.optim.AdamW

    def recording_adamw(params, **kwargs):
        optimized.extend(params)
        return adamw(optimized, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", recording_adamw)
    episodes = recall_episodes(96)
    train_set, held_out = episodes[:64], episodes[64:]
    options = TrainOptions(steps=40, lr=1e-2, eval_every=20, progress=False)
    summary = train(mem, train_set, held_out, options, tmp_path / "out")

    # the held-out loss with memory falls far below its start and below the zeroed state
    assert summary["initial_eval_loss_memory"] - summary["eval_loss_memory"] > 2.0
    assert summary["eval_loss_no_memory"] - summary["eval_loss_memory"] > 2.0
    # and it is recall, not a bias: another episode's history does not help as much
    shuffled = [
        Episode(a.history, b.query, b.target) for a, b in zip(held_out, held_out[1:] + held_out[:1], strict=True)
    ]
    mismatched = evaluate(mem, shuffled, options.write_tokens)["eval_loss_memory"]
    assert mismatched - summary["eval_loss_memory"] > 1.0

    after = backbone_tensors(mem)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"
    backbone = [p for n, p in mem.model.named_parameters() if ".delta_mem." not in n]
    assert backbone and not any(p.requires_grad for p in backbone)
    assert {id(p) for p in optimized} == {id(p) for p in mem.parameters()}

    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["training"]["steps"] == 40 and saved["training"]["eval_loss_memory"] == summary["eval_loss_memory"]
    assert saved["training"]["episodes"] == {"train": 64, "held_out": 32}


def test_gradients_flow_through_the_scan_into_delta_mem_only(model_dirs):
    mem = fresh_memory(model_dirs)
    strengthen(mem)
    freeze_backbone(mem)
    episode = Episode(history=(tuple(token_ids(1, 30, seed=3)[0].tolist()),), query=(5, 6, 7), target=(9, 10))
    loss = EpisodeLoss(mem)(*episode_tensors(episode, write_tokens=1024, segmented=False, device="cpu"))
    loss.backward()
    for name, param in mem.model.named_parameters():
        if ".delta_mem." in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"backbone {name} got a gradient"
    # W_k, W_v and W_β reach the loss only through the state the write pass built
    assert mem.layers[0].memory_k_proj.grad.abs().sum() > 0


def test_a_4bit_backbone_passes_the_same_gradients_as_its_dequantized_weights(model_dirs):
    import bitsandbytes.functional as bnbf

    nf4, full = load_tiny_model(model_dirs["qwen3"], nf4=True), load_tiny_model(model_dirs["qwen3"])
    with torch.no_grad():
        for name, module in nf4.named_modules():
            if type(module).__name__ == "Linear4bit":
                weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state)
                full.get_submodule(name).weight.copy_(weight)
    episode = Episode(history=(tuple(token_ids(1, 30, seed=3)[0].tolist()),), query=(5, 6, 7), target=(9, 10))
    grads = []
    for model in (nf4, full):
        torch.manual_seed(0)
        mem = memory.attach(model, memory.DeltaMemConfig())
        strengthen(mem)
        freeze_backbone(mem)
        for _ in range(2):  # the second forward is where an eval-mode 4-bit layer would have repacked
            mem.model.zero_grad(set_to_none=True)
            EpisodeLoss(mem)(*episode_tensors(episode, 1024, False, "cpu")).backward()
        grads.append({name: p.grad for name, p in mem.named_parameters()})
    for name, grad in grads[1].items():
        assert torch.allclose(grads[0][name], grad, rtol=1e-3, atol=1e-6), name


def test_write_tokens_keep_the_end_of_the_history():
    episode = Episode(history=((1, 2, 3), (4, 5)), query=(6,), target=(7,))
    passes, sequence, target = episode_tensors(episode, write_tokens=3, segmented=True, device="cpu")
    ((history, segments, store),) = passes
    assert history.tolist() == [[3, 4, 5]] and segments.tolist() == [[0, 1, 1]] and store is None
    assert sequence.tolist() == [[6, 7]] and target.tolist() == [7]


def test_chunked_writes_are_the_servers_write_passes(model_dirs):
    episode = Episode(history=((1, 2, 3, 4, 5, 6), (7, 8, 9)), query=(6,), target=(7,))
    passes, _, _ = episode_tensors(episode, write_tokens=8, segmented=True, device="cpu", chunk_tokens=4)
    assert [ids.tolist() for ids, _, _ in passes] == [[[2, 3, 4, 5]], [[6]], [[7, 8, 9]]]  # per piece, then per chunk
    assert all(not segments.any() for _, segments, _ in passes)  # each pass one segment, as the server writes
    mem = fresh_memory(model_dirs)
    strengthen(mem)
    passes, sequence, target = episode_tensors(episode, 1024, False, "cpu", chunk_tokens=4)
    with torch.no_grad():
        EpisodeLoss(mem)(passes, sequence, target)
        trained = mem.states()["conventions"]
        mem.reset()
        for piece in ([1, 2, 3, 4], [5, 6], [7, 8, 9]):  # what the server's write jobs run
            with mem.writing("conventions"):
                mem.model(input_ids=torch.tensor([piece]))
    assert trained.any() and torch.equal(trained, mem.states()["conventions"])


def run_curve(model_dirs, out, **changes):
    mem = fresh_memory(model_dirs)
    episodes = recall_episodes(24, seed=1)
    options = TrainOptions(**{"steps": 6, "lr": 1e-2, "checkpoint_every": 3, "progress": False, **changes})
    return mem, train(mem, episodes[:18], episodes[18:], options, out)


def test_resume_continues_exactly_where_the_checkpoint_stopped(model_dirs, tmp_path):
    whole, _ = run_curve(model_dirs, tmp_path / "whole")
    run_curve(model_dirs, tmp_path / "half", steps=3)
    checkpoint = tmp_path / "half" / "checkpoints" / "step-000003"
    expected = {"adapter.safetensors", "adapter_config.json", "optimizer.pt", "rng.pt", "trainer_state.json"}
    assert {p.name for p in checkpoint.iterdir()} == expected
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert int(optimizer_state["state"][0]["step"]) == 3

    resumed = fresh_memory(model_dirs, seed=5)  # other initial weights: the checkpoint's must win
    episodes = recall_episodes(24, seed=1)
    options = TrainOptions(steps=6, lr=1e-2, checkpoint_every=3, progress=False)
    summary = train(resumed, episodes[:18], episodes[18:], options, tmp_path / "resumed", resume=checkpoint)
    assert summary["resumed_from"] == str(checkpoint)
    for name, tensor in whole.adapter_state_dict().items():
        assert torch.equal(resumed.adapter_state_dict()[name], tensor), name
    assert (tmp_path / "resumed" / "loss.csv").read_text() == (tmp_path / "whole" / "loss.csv").read_text()

    with pytest.raises(CheckpointError, match="seed: checkpoint 0, now 1"):
        train(fresh_memory(model_dirs), episodes[:18], episodes[18:], TrainOptions(steps=6, seed=1, progress=False),
              tmp_path / "other", resume=checkpoint)


def test_loss_curve_is_written_as_csv_and_png(model_dirs, tmp_path, monkeypatch):
    _, summary = run_curve(model_dirs, tmp_path / "run", steps=None, epochs=1, grad_accum=2, checkpoint_every=0)
    assert summary["steps"] == 9 and summary["epochs"] == 1.0  # 18 episodes, two per step
    rows = list(csv.DictReader((tmp_path / "run" / "loss.csv").open()))
    assert tuple(rows[0]) == COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(0, 10))
    assert rows[0]["train_loss"] == "" and rows[0]["eval_loss_memory"] and rows[0]["eval_loss_no_memory"]
    assert all(r["train_loss"] for r in rows[1:]) and rows[-1]["eval_loss_memory"] and rows[-1]["eval_loss_no_memory"]
    png = tmp_path / "run" / "loss.png"
    if importlib.util.find_spec("matplotlib"):  # in the [test] extra
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not png.exists()


def test_without_matplotlib_only_the_csv_is_written(model_dirs, tmp_path, monkeypatch, caplog):
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run_curve(model_dirs, tmp_path / "run", steps=1, checkpoint_every=0)
    assert (tmp_path / "run" / "loss.csv").is_file() and not (tmp_path / "run" / "loss.png").exists()
    assert "matplotlib is not installed, so only loss.csv was written" in caplog.text


def test_autocast_does_not_reach_the_memory(model_dirs):
    mem = fresh_memory(model_dirs)
    strengthen(mem)
    with torch.no_grad():
        with mem.writing("edits"):
            mem.model(input_ids=token_ids(1, 40))
        full = mem.states()["edits"]
        mem.reset()
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training: the scan must stay float32
            with mem.writing("edits"):
                mem.model(input_ids=token_ids(1, 40))
            logits = mem.model(input_ids=token_ids(1, 5, seed=2)).logits
    assert mem._states["edits"][0].dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(mem.states()["edits"], full, atol=0.1)


def test_options_are_checked_by_name():
    with pytest.raises(ValueError, match="steps or epochs, not both"):
        TrainOptions(steps=3, epochs=1)
    with pytest.raises(ValueError, match="grad_accum=0"):
        TrainOptions(grad_accum=0)
    with pytest.raises(ValueError, match="lr=0"):
        TrainOptions(lr=0)


def test_conversations_become_episodes(model_dirs, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["qwen3"])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "The code word is apple."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Which word?"},
        {"role": "assistant", "content": "apple"},
    ]
    episode = conversation_episode(tokenizer, messages, "x:1")
    assert [tokenizer.decode(p) for p in episode.history] == [
        "<|im_start|>user\nThe code word is apple.<|im_end|>\n",
        "<|im_start|>assistant\nNoted.<|im_end|>\n",
    ]
    assert tokenizer.decode(episode.query) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhich word?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.decode(episode.target) == "apple<|im_end|>\n"

    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"messages": messages}) + "\n\n" + json.dumps({"messages": messages[:3]}) + "\n")
    with pytest.raises(EpisodeError, match=r"data.jsonl:3: needs at least one turn of history"):
        read_conversations(data, tokenizer)
    data.write_text("{not json\n")
    with pytest.raises(EpisodeError, match=r"data.jsonl:1: not JSON"):
        read_conversations(data, tokenizer)


def test_held_out_split_is_seeded():
    episodes = recall_episodes(20)
    train_a, held_a = split_episodes(episodes, 0.25, seed=3)
    train_b, held_b = split_episodes(episodes, 0.25, seed=3)
    assert held_a == held_b and train_a == train_b and len(held_a) == 5 and len(train_a) == 15
    assert split_episodes(episodes, 0.25, seed=4)[1] != held_a
    assert len(split_episodes(episodes[:2], 0.01, seed=0)[1]) == 1  # a positive fraction holds one out
    assert split_episodes(episodes, 0.0, seed=0)[1] == []
