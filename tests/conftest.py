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
