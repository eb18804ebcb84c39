"""Adapter integrity: the config is checksummed with the weights, and the backbone's model
type decides as much as its shapes (a Llama adapter on a Qwen3 of identical shapes is refused)."""

from __future__ import annotations

import json
import logging

import pytest

import memory
from memory.adapter_io import CONFIG_NAME, AdapterError
from tests.memory.helpers import strengthen
from tests.tiny_models import load_tiny_model


@pytest.fixture
def saved(model_dirs, tmp_path):
    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    strengthen(mem, seed=2)
    return memory.save_adapter(mem, tmp_path / "adapter", base_model_id="tiny/qwen3")


def edit(path, change):
    meta = json.loads((path / CONFIG_NAME).read_text())
    change(meta)
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda m: m["delta_mem"].update(alpha=64.0), id="alpha-16-to-64"),
        pytest.param(lambda m: m["delta_mem"].update(write="segment"), id="write-token-to-segment"),
        pytest.param(lambda m: m["base_model"].update(id="someone/else"), id="base-model-id"),
        pytest.param(lambda m: m["base_model"].update(model_type="llama"), id="model-type"),
        pytest.param(lambda m: m.update(prompt="fim"), id="prompt-shape-added"),
    ],
)
def test_a_changed_config_is_refused_naming_it(model_dirs, saved, change):
    edit(saved, change)
    with pytest.raises(AdapterError, match="does not match its config_sha256"):
        memory.read_adapter(saved)
    with pytest.raises(AdapterError, match="config_sha256"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), saved)


def test_the_recorded_prompt_shape_is_checksummed_and_optional(model_dirs, saved, tmp_path):
    assert "prompt" not in memory.read_adapter(saved)[2]  # a config without the key loads
    mem = memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), saved)
    chat = memory.save_adapter(mem, tmp_path / "chat", extra={"prompt": "chat"})
    assert memory.read_adapter(chat)[2]["prompt"] == "chat"
    edit(chat, lambda m: m.update(prompt="fim"))
    with pytest.raises(AdapterError, match="does not match its config_sha256"):
        memory.read_adapter(chat)


def test_a_version_1_adapter_still_loads_and_says_its_config_is_unverified(model_dirs, saved, caplog):
    edit(saved, lambda m: (m.pop("config_sha256"), m.update(format_version=1)))
    with caplog.at_level(logging.WARNING, logger="memory.adapter_io"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), saved).detach()
    assert "not verified" in caplog.text


def test_an_adapter_for_another_architecture_with_the_same_shapes_is_refused(model_dirs, tmp_path):
    llama = memory.attach(load_tiny_model(model_dirs["llama"]), memory.DeltaMemConfig())
    path = memory.save_adapter(llama, tmp_path / "llama-adapter", base_model_id="tiny/llama")
    assert json.loads((path / CONFIG_NAME).read_text())["base_model"]["model_type"] == "llama"
    with pytest.raises(AdapterError, match="model type: adapter llama, model qwen3"):
        memory.load_adapter(load_tiny_model(model_dirs["qwen3"]), path)
