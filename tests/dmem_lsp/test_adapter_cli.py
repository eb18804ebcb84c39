"""``dmem-lsp adapter train|info|export|import`` on tiny models: training end to end in a real
subprocess, lossless export and import, tampered and truncated files refused, and the
official release's format imported to the same outputs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import memory
from dmem_lsp.cli.main import main
from memory.adapter_io import CONFIG_NAME, WEIGHTS_NAME
from tests.memory.helpers import strengthen, write_official, written_logits
from tests.tiny_models import load_tiny_model

WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "lemon"]


def conversations(path, count=20, seed=0):
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(count):
            word = rng.choice(WORDS)
            messages = [
                {"role": "user", "content": f"Remember the word {word}."},
                {"role": "assistant", "content": "Noted."},
                {"role": "user", "content": "Which word?"},
                {"role": "assistant", "content": word},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def adapter(main_args, capsys):
    """Run ``dmem-lsp adapter ...`` in this process: (exit code, stdout, stderr)."""
    code = main(["adapter", *main_args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def saved(model_dirs, tmp_path):
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    strengthen(mem, seed=2)
    return memory.save_adapter(mem, tmp_path / "saved", base_model_id="tiny/qwen3")


def test_train_in_a_subprocess_then_info(model_dirs, tmp_path, capsys):
    data = conversations(tmp_path / "words.jsonl")
    output = tmp_path / "trained"
    result = subprocess.run(
        [sys.executable, "-m", "dmem_lsp", "adapter", "train", "--model", str(model_dirs["qwen3"]), "--data", str(data),
         "--output", str(output), "--steps", "4", "--lr", "1e-2", "--write-tokens", "48", "--eval-fraction", "0.25",
         "--checkpoint-every", "2", "--seed", "3", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"saved {output}: 4 steps on 15 episodes; held-out loss")
    assert "training δ-mem" in result.stderr  # the progress bar
    assert {"adapter.safetensors", "adapter_config.json", "loss.csv", "loss.png", "checkpoints"} <= {
        p.name for p in output.iterdir()
    }
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step-000002", "step-000004"]

    code, out, err = adapter(["info", str(output), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    config = json.loads((output / CONFIG_NAME).read_text())
    assert info["weights_sha256"] == config["weights_sha256"] and info["parameters"] == 6160
    assert info["base_model"]["id"] == str(model_dirs["qwen3"]) and info["base_model"]["num_layers"] == 2
    training = info["training"]
    assert training["steps"] == 4 and training["seed"] == 3 and training["data"] == f"conversations {data}"
    assert training["episodes"] == {"train": 15, "held_out": 5}
    assert training["eval_loss_memory"] > 0 and training["eval_loss_no_memory"] > 0 and training["date"]

    code, out, _ = adapter(["info", str(output)], capsys)
    assert code == 0 and "parameters  6,160" in out and "4 steps" in out and "with the state zeroed" in out


def test_export_then_import_keeps_every_tensor(saved, tmp_path, capsys):
    code, out, err = adapter(["export", str(saved), "--output", str(tmp_path / "exported")], capsys)
    assert code == 0, err
    assert out.startswith(f"exported {saved} (format: dmem-lsp, version 2)")
    code, _, err = adapter(["import", str(tmp_path / "exported"), "--output", str(tmp_path / "imported")], capsys)
    assert code == 0, err
    original = safetensors.torch.load_file(saved / WEIGHTS_NAME)
    imported = safetensors.torch.load_file(tmp_path / "imported" / WEIGHTS_NAME)
    assert original.keys() == imported.keys()
    assert all(torch.equal(original[k], imported[k]) for k in original)
    meta = json.loads((tmp_path / "imported" / CONFIG_NAME).read_text())
    assert meta["base_model"]["id"] == "tiny/qwen3"
    assert meta["delta_mem"] == json.loads((saved / CONFIG_NAME).read_text())["delta_mem"]

    code, _, err = adapter(["export", str(saved), "--output", str(tmp_path / "imported")], capsys)
    assert code == 1 and "not an empty directory" in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_damaged_weights_are_refused(saved, tmp_path, capsys, damage):
    weights = saved / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0x01
    else:
        del data[len(data) - 100:]
    weights.write_bytes(bytes(data))
    for action in (["info", str(saved)], ["export", str(saved), "--output", str(tmp_path / "copy")]):
        code, out, err = adapter(action, capsys)
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and "truncated or was modified" in err, err
    assert not (tmp_path / "copy").exists() or not any((tmp_path / "copy").iterdir())


def test_official_format_imports_to_the_same_outputs(model_dirs, tmp_path, capsys):
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    strengthen(mem, seed=4)
    official = write_official(tmp_path / "official", mem)
    code, out, err = adapter(
        ["import", str(official), "--output", str(tmp_path / "ours"), "--base-model", "tiny/qwen3"], capsys
    )
    assert code == 0, err
    assert "format: official release" in out

    direct_model, imported_model = load_tiny_model(model_dirs["qwen3"]), load_tiny_model(model_dirs["qwen3"])
    direct = memory.load_adapter(direct_model, official)
    imported = memory.load_adapter(imported_model, tmp_path / "ours")
    assert torch.equal(written_logits(direct_model, direct), written_logits(imported_model, imported))

    code, out, _ = adapter(["info", str(tmp_path / "ours"), "--json"], capsys)
    info = json.loads(out)
    assert info["base_model"]["id"] == "tiny/qwen3" and info["parameters"] == direct.num_trainable_parameters()

    weights = official / "delta_mem_adapter.pt"
    weights.write_bytes(weights.read_bytes()[:-200])  # truncated: refused, nothing written
    code, _, err = adapter(["import", str(official), "--output", str(tmp_path / "broken")], capsys)
    assert code == 1 and err.count("\n") == 1 and "cannot read" in err and not (tmp_path / "broken").exists()


def test_bad_input_is_one_line_and_a_failing_exit_code(model_dirs, tmp_path, capsys):
    code, _, err = adapter(["info", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    code, _, err = adapter(["info", "nobody/no-such-adapter"], capsys)  # a hub id, as the server resolves it
    assert code == 1 and err.count("\n") == 1 and "HF_HUB_OFFLINE=1 is set" in err
    code, _, err = adapter(
        ["train", "--model", str(model_dirs["qwen3"]), "--data", str(tmp_path / "none.jsonl"),
         "--output", str(tmp_path / "o")],
        capsys,
    )
    assert code == 1 and err.count("\n") == 1 and "no such file" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    code, _, err = adapter(
        ["train", "--model", str(model_dirs["qwen3"]), "--data", str(bad), "--output", str(tmp_path / "o"),
         "--device", "cpu", "--no-progress"],
        capsys,
    )
    assert code == 1 and err.strip().endswith("and the assistant's answer as the last two") and "bad.jsonl:1" in err
