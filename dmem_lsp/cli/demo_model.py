"""The model ``dmem-lsp demo`` serves, and the workspace it is shown on.

Everything the demo knows about its model is a recipe here: its name, whether it was
trained to recall, the workspace (the convention files the server writes into memory, the
documents completed with them absent from the prompt, and the answers that recall them),
and ``model(cache)``, the backbone and adapter directories to serve. ``RECIPE`` is the one
the demo uses: switching recipes is that one line.

- ``StandIn``: a tiny random Qwen3 (64 wide, 2 layers) with a byte-level BPE tokenizer,
  built from a config the way the tests build theirs, and a δ-mem adapter with random
  weights, built at first use into the cache (seconds). Written memory changes its answers,
  a restart keeps them, a reset takes them back; it does not *recall*, and the demo says so.
- ``Shipped``: the trained model in ``dmem_lsp/demo_data/``, made by ``scripts/make-demo-model``
  (the served benchmark's recipe: a backbone trained to read the server's prompts, an
  adapter trained on the prompts the server sends). Every file is checked against
  ``SHA256SUMS``, and that file against ``SHIPPED_SHA256``, before the demo serves them.

Imports torch and transformers only to build the stand-in: the demo imports this lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECIPE", "Query", "RecipeError", "Shipped", "StandIn", "Workspace"]


class RecipeError(Exception):
    """The demo's model cannot be served (the message says why)."""


@dataclass(frozen=True)
class Query:
    """A document completed at a cursor; the convention that answers it is in memory only."""

    path: str
    prefix: str
    """The document before the cursor."""
    suffix: str
    """The document after it."""
    expected: str
    """What a model that recalls the conventions completes (its answer starts with it)."""

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class Workspace:
    conventions: dict[str, str]
    """{path: text}: the convention files, added to the workspace when the demo writes memory."""
    files: dict[str, str]
    """{path: text}: the rest of the project, there from the start (no convention file: memory starts empty)."""
    queries: tuple[Query, ...]


# -- the stand-in ---------------------------------------------------------------------------


class StandIn:
    name = "standin-1"
    """The recipe's name and version: its cache key (a new version builds a new model)."""
    trained = False
    seed = 0
    workspace = Workspace(
        conventions={
            "CONTRIBUTING.md": (
                "# Contributing\n\n- tests live in qa/\n- indent with 2 spaces\n- the logger is named audit\n"
            ),
        },
        files={"src/app.py": "def main():\n  print('hello')\n"},
        queries=(
            Query("src/tests_dir.py", 'TESTS_DIR = "', '"\n', "qa/"),
            Query("src/indent.py", "INDENT = ", "\n", "2"),
            Query("src/logger.py", 'LOGGER = "', '"\n', "audit"),
        ),
    )

    def model(self, cache: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
        """Built once into ``cache/<name>``, then reused."""
        home = cache / self.name
        model, adapter = home / "model", home / "adapter"
        if model.is_dir() and adapter.is_dir():
            say(f"[1/6] model: {home} (the {self.name} stand-in, built before)")
            return model, adapter
        say(f"[1/6] model: building the {self.name} stand-in into {home} (first run only) ...")
        began = time.monotonic()
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the line above is the progress shown
        with tempfile.TemporaryDirectory(prefix=f"{self.name}.", dir=cache) as building:
            self.build(Path(building))
            if home.exists():
                shutil.rmtree(home)  # an unfinished one (the rename below is a build's last step)
            os.replace(building, home)
            Path(building).mkdir()  # for TemporaryDirectory's cleanup
        say(f"      built in {time.monotonic() - began:.0f} s")
        return model, adapter

    def build(self, out: Path) -> None:
        """``out/model`` (backbone and tokenizer, ``save_pretrained``) and ``out/adapter``; the same for a seed."""
        import torch
        import transformers

        import memory
        from dmem_lsp.cli.tiny_tokenizer import byte_level_tokenizer

        ws = self.workspace
        corpus = [*ws.conventions.values(), *ws.files.values(), *(q.text for q in ws.queries)]
        # the alphabet is the corpus' characters (ASCII): every answer prints, however random
        tokenizer = byte_level_tokenizer(corpus * 20, 400)
        tokenizer.save_pretrained(out / "model")
        config = transformers.Qwen3Config(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
            tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(self.seed)
        model = transformers.AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # wider than the default init, so that answers are far from ties
            for param in model.parameters():
                if param.dim() == 2:
                    param.normal_(0.0, 0.08)
        model.save_pretrained(out / "model")
        mem = memory.attach(model, memory.DeltaMemConfig())
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():  # random weights strong enough that a written state changes the answers
            for layer in mem.layers:
                for param in (layer.memory_q_proj, layer.memory_k_proj, layer.memory_v_proj):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
                for param in (layer.beta_proj, layer.delta_q_proj, layer.delta_o_proj):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
                layer.beta_bias.copy_(torch.randn(layer.beta_bias.shape, generator=generator))
        memory.save_adapter(mem, out / "adapter", base_model_id=f"dmem-lsp-demo/{self.name}")


# -- the shipped, trained model -------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parent.parent / "demo_data"
SHIPPED_SHA256 = "191bddfaaf797ef626f42c502fcad1ced31ee5afe9319643126e1779e23678e9"
"""sha256 of ``demo_data/SHA256SUMS``, as ``scripts/make-demo-model`` printed it."""


class Shipped:
    trained = True

    def __init__(self, directory: Path = SHIPPED, sha256: str = SHIPPED_SHA256) -> None:
        self.directory, self.sha256 = directory, sha256
        try:
            spec = json.loads((directory / "workspace.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RecipeError(
                f"the demo's model is not in {directory}: {error} (make it: scripts/make-demo-model)"
            ) from error
        self.name = spec["recipe"]
        self.workspace = Workspace(spec["conventions"], spec["files"], tuple(Query(**q) for q in spec["queries"]))

    def model(self, cache: Path, say: Callable[[str], None]) -> tuple[Path, Path]:
        """The shipped directories, once every file matches the recorded sha256."""
        self.verify()
        say(f"[1/6] model: {self.directory} (the {self.name} recipe, shipped; sha256 checked)")
        return self.directory / "backbone", self.directory / "adapter"

    def verify(self) -> None:
        sums = (self.directory / "SHA256SUMS").read_bytes()
        if hashlib.sha256(sums).hexdigest() != self.sha256:
            raise RecipeError(
                f"{self.directory / 'SHA256SUMS'} is not the one this dmem-lsp ships (its sha256 differs)"
            )
        for line in sums.decode().splitlines():
            digest, relative = line.split("  ", 1)
            if hashlib.sha256((self.directory / relative).read_bytes()).hexdigest() != digest:
                raise RecipeError(
                    f"{self.directory / relative} is not the file this dmem-lsp ships (its sha256 differs)"
                )


RECIPE = Shipped()
"""The recipe ``dmem-lsp demo`` serves."""
