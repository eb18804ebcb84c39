"""Adapter files: our format round-trips bit-exactly; the official layout loads to the same model."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import memory
from memory.adapter_io import CONFIG_NAME, OFFICIAL_WEIGHTS_NAME, WEIGHTS_NAME
from tests.memory.helpers import strengthen, write_official, written_logits
from tests.tiny_models import load_tiny_model


@pytest.fixture
def trained(model_dirs):
    """A tiny Qwen3 with a δ-mem adapter whose weights are not the initial ones."""
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem, seed=4)
    return model, mem


def test_round_trip_is_bit_exact(model_dirs, trained, tmp_path):
    model, mem = trained
    expected = written_logits(model, mem)
    path = memory.save_adapter(mem, tmp_path / "adapter", base_model_id="tiny/qwen3")
    meta = json.loads((path / CONFIG_NAME).read_text())
    assert list(meta) == sorted(meta) and meta["format_version"] == 2
    assert meta["base_model"]["id"] == "tiny/qwen3" and meta["base_model"]["hidden_size"] == 64
    assert meta["parameters"] == mem.num_trainable_parameters()
    assert len(meta["weights_sha256"]) == 64

    fresh = load_tiny_model(model_dirs["qwen3"])
    loaded = memory.load_adapter(fresh, path)
    assert loaded.config == mem.config
    for name, tensor in mem.adapter_state_dict().items():
        assert torch.equal(dict(loaded.adapter_state_dict())[name], tensor), name
    assert torch.equal(written_logits(fresh, loaded), expected)


def test_tampered_or_truncated_weights_are_refused(trained, model_dirs, tmp_path):
    _, mem = trained
    path = memory.save_adapter(mem, tmp_path / "adapter")
    weights = path / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(memory.AdapterError, match="truncated or was modified"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(memory.AdapterError, match="truncated or was modified"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)


def test_official_layout_gives_the_same_outputs_as_ours(trained, model_dirs, tmp_path):
    model, mem = trained
    with torch.no_grad():  # the official file stores bf16; give ours the same values
        for param in mem.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    ours = memory.save_adapter(mem, tmp_path / "ours")
    official = write_official(tmp_path / "official", mem)

    a_model, b_model = load_tiny_model(model_dirs["qwen3"]), load_tiny_model(model_dirs["qwen3"])
    a = memory.load_adapter(a_model, ours)
    b = memory.load_adapter(b_model, official)
    assert b.config.rank == 8 and b.config.write == "token"
    assert torch.equal(written_logits(a_model, a), written_logits(b_model, b))
    assert torch.equal(a.states()["edits"], b.states()["edits"])


def test_official_segment_writes_map_to_ssw(trained, tmp_path):
    _, mem = trained
    path = write_official(tmp_path / "ssw", mem, {"memory_write_granularity": "message_mean"})
    config, _, _ = memory.read_adapter(path)
    assert config.write == "segment"


def test_unexpected_keys_and_shapes_are_named(trained, model_dirs, tmp_path):
    _, mem = trained
    path = write_official(tmp_path / "extra", mem, extra_tensors={"model.layers.0.self_attn.lora_A": torch.zeros(2)})
    with pytest.raises(memory.AdapterError, match="lora_A"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)

    path = write_official(
        tmp_path / "shape", mem, extra_tensors={"model.layers.1.self_attn.beta_bias": torch.zeros(5)}
    )
    with pytest.raises(memory.AdapterError, match=r"layers\.1\.beta_bias has shape \(5,\), expected \(8,\)"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)

    path = write_official(tmp_path / "foreign", mem, extra_tensors={"lm_head.weight": torch.zeros(2)})
    with pytest.raises(memory.AdapterError, match="unexpected keys.*lm_head.weight"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)

    model = load_tiny_model(model_dirs["qwen3"])
    path = write_official(tmp_path / "deep", mem, extra_tensors={"model.layers.7.self_attn.beta_bias": torch.zeros(8)})
    with pytest.raises(memory.AdapterError, match=r"unexpected keys: layers\.7\.beta_bias"):
        memory.load_adapter(model, path)
    assert not hasattr(model.model.layers[0].self_attn, "delta_mem"), "a refused adapter leaves the model as it was"


def test_official_unsupported_settings_are_refused(trained, tmp_path):
    _, mem = trained
    path = write_official(tmp_path / "kv", mem, {"delta_heads": ["q", "k", "v", "o"], "couple_lambda": False})
    with pytest.raises(memory.AdapterError, match=r"couple_lambda=False.*delta_heads"):
        memory.read_adapter(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_official_weights_are_never_unpickled(trained, tmp_path):
    _, mem = trained
    path = write_official(tmp_path / "pickle", mem)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(path / OFFICIAL_WEIGHTS_NAME, "wb") as f:
        pickle.dump({"model.layers.0.self_attn.beta_bias": Payload()}, f)
    with pytest.raises(memory.AdapterError, match="tensors only"):
        memory.read_adapter(path)


def test_adapter_for_another_backbone_is_refused(trained, model_dirs, tmp_path):
    _, mem = trained
    path = memory.save_adapter(mem, tmp_path / "qwen3-adapter", base_model_id="tiny/qwen3")
    other = load_tiny_model(model_dirs["smollm3"])  # 4 layers, not 2
    with pytest.raises(memory.AdapterError, match=r"built for tiny/qwen3.*num_layers: adapter 2, model 4"):
        memory.load_adapter(other, path)


def test_missing_adapter_says_what_was_expected(model_dirs, tmp_path):
    with pytest.raises(memory.AdapterError, match="does not exist"):
        memory.read_adapter(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(memory.AdapterError, match="adapter_config.json.*delta_mem_config.json"):
        memory.read_adapter(tmp_path / "empty")
