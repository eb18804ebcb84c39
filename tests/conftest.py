"""Shared fixtures: tiny models are built and saved once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """{architecture: directory of a saved tiny model}, built on first use."""
    from tests.tiny_models import save_tiny_model

    class Dirs(dict):
        def __missing__(self, architecture):
            self[architecture] = save_tiny_model(architecture, tmp_path_factory.mktemp(f"tiny-{architecture}"))
            return self[architecture]

    return Dirs()


@pytest.fixture(scope="session")
def talkative_model(tmp_path_factory):
    """A tiny qwen3 that never ends by itself, saved with its tokenizer (for the server)."""
    from tests.tiny_models import save_talkative_model

    return save_talkative_model(tmp_path_factory.mktemp("talkative"))


@pytest.fixture(scope="session")
def talkative_adapter(talkative_model, tmp_path_factory):
    """A δ-mem adapter in our format for ``talkative_model``."""
    import memory
    from tests.memory.helpers import strengthen
    from tests.tiny_models import load_tiny_model

    mem = memory.attach(load_tiny_model(talkative_model), memory.DeltaMemConfig())
    strengthen(mem)
    return memory.save_adapter(mem, tmp_path_factory.mktemp("adapter") / "talkative", base_model_id="tiny/talkative")
