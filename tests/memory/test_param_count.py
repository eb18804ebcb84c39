"""Parameter counts on full-size shapes, built on the meta device (no weights, no download)."""

from __future__ import annotations

import torch
import transformers

import memory


def qwen3_4b_on_meta():
    config = transformers.Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def test_released_tsw_adapter_has_4_866_336_parameters():
    mem = memory.attach(qwen3_4b_on_meta(), memory.DeltaMemConfig(rank=8, alpha=16.0, state_heads=1, write="token"))
    assert mem.num_trainable_parameters() == 4_866_336
    assert len(mem.layers) == 36
    assert mem.states()["edits"].shape == (36, 1, 8, 8)


def test_multi_state_count_follows_the_shapes():
    mem = memory.attach(qwen3_4b_on_meta(), memory.DeltaMemConfig(rank=8, state_heads=4))
    h_r, H, q_out = 32, 2560, 4096
    per_layer = 4 * h_r * H + h_r + q_out * h_r + H * h_r
    assert mem.num_trainable_parameters() == 36 * per_layer
