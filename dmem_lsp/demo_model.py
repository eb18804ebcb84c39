"""The model ``dmem-lsp demo`` serves, and the workspace it is shown on.

Everything the demo knows about its model is here, behind ``build`` (write a backbone
directory and an adapter directory) and ``WORKSPACE`` (the convention files the server
writes into memory, and the documents completed at their end), so that changing the
recipe is a change to this file alone. ``RECIPE`` names the recipe in the cache: the
demo builds a model once per recipe and reuses it.

Today's recipe is a **stand-in**: a tiny random Qwen3 (64 wide, 2 layers) with a byte-level
BPE tokenizer and a ChatML template, built from a config the way the tests build theirs,
and a δ-mem adapter with random weights (``TRAINED = False``). Written memory changes its
answers, a restart keeps them, a reset takes them back to the no-memory ones; it does not
*recall* (it was never trained to), and the demo says so. The trained recipe (a backbone
and an adapter trained on the prompts the server sends, issue 13) replaces it here.

Imports torch and transformers (in ``build`` only): the demo imports this module lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RECIPE", "TRAINED", "SEED", "Query", "Workspace", "WORKSPACE", "build"]

RECIPE = "standin-1"
"""The recipe's name and version: the cache key (a new recipe builds a new model)."""
TRAINED = False
"""Whether the model was trained to recall from memory (the demo's verdicts depend on it)."""
SEED = 0


@dataclass(frozen=True)
class Query:
    """A document completed at its end; the convention that answers it is in memory only."""

    path: str
    text: str
    expected: str
    """What a model that recalls the conventions completes (its answer starts with it)."""


@dataclass(frozen=True)
class Workspace:
    conventions: dict[str, str]
    """{path: text}: the convention files, added to the workspace when the demo writes memory."""
    files: dict[str, str]
    """{path: text}: the rest of the project, there from the start (no convention file: memory starts empty)."""
    queries: tuple[Query, ...]


WORKSPACE = Workspace(
    conventions={
        "CONTRIBUTING.md": (
            "# Contributing\n\n"
            "- tests live in qa/\n"
            "- indent with 2 spaces\n"
            "- the logger is named audit\n"
        ),
    },
    files={
        "src/app.py": "def main():\n  print('hello')\n",
    },
    queries=(
        Query("src/tests_dir.py", 'TESTS_DIR = "', "qa/"),
        Query("src/indent.py", "INDENT = ", "2"),
        Query("src/logger.py", 'LOGGER = "', "audit"),
    ),
)

_CORPUS = [*WORKSPACE.conventions.values(), *WORKSPACE.files.values(), *(q.text for q in WORKSPACE.queries)]
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(out: Path, seed: int = SEED) -> tuple[Path, Path]:
    """Write ``out/model`` (backbone and tokenizer, ``save_pretrained``) and ``out/adapter``; the same for a seed."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import memory

    model_dir, adapter_dir = out / "model", out / "adapter"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIALS, show_progress=False
    )  # the alphabet is the corpus' characters (ASCII): every answer prints, however random
    core.train_from_iterator(_CORPUS * 20, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=_CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(model_dir)
    config = transformers.Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # wider than the default init, so that answers are far from ties
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(model_dir)
    mem = memory.attach(model, memory.DeltaMemConfig())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights strong enough that a written state changes the answers
        for layer in mem.layers:
            for param in (layer.memory_q_proj, layer.memory_k_proj, layer.memory_v_proj):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            for param in (layer.beta_proj, layer.delta_q_proj, layer.delta_o_proj):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            layer.beta_bias.copy_(torch.randn(layer.beta_bias.shape, generator=generator))
    memory.save_adapter(mem, adapter_dir, base_model_id=f"dmem-lsp-demo/{RECIPE}")
    return model_dir, adapter_dir
