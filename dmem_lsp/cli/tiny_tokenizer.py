"""The small byte-level BPE tokenizer of the demo's stand-in model and the served benchmark.

One builder, so that the demo and ``benchmarks/served_task.py`` cannot drift apart: a BPE
trained on a corpus (byte-level, so any text round-trips), the ChatML special tokens and
template the server's chat prompts use, and the fill-in-the-middle tokens of
``runtime.prompts`` (or, with ``fim=False``, the same ids renamed ``NO_FIM_TOKENS``, so that
the server's rule picks chat prompts for the same backbone). Importing this module is
cheap: ``tokenizers`` and ``transformers`` are imported when a tokenizer is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from dmem_lsp.runtime.prompts import FIM_TOKENS

__all__ = ["CHAT_TEMPLATE", "FIM_TOKENS", "NO_FIM_TOKENS", "SPECIAL_TOKENS", "byte_level_tokenizer"]

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
NO_FIM_TOKENS = ("<|reserved_0|>", "<|reserved_1|>", "<|reserved_2|>")
"""The chat variant of the tokenizer names the FIM ids so, so the server's rule picks chat."""
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_level_tokenizer(corpus: Iterable[str], vocab_size: int, *, fim: bool = True, every_byte: bool = False) -> Any:
    """A ``transformers.PreTrainedTokenizerFast`` trained on ``corpus`` up to ``vocab_size``.

    ``every_byte``: its alphabet is all 256 byte symbols (any text encodes without unknown
    merges); otherwise the corpus' characters (a random model then only ever prints those).
    ``fim=False`` renames the FIM tokens ``NO_FIM_TOKENS``, keeping every id.
    """
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if every_byte else {}
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS + FIM_TOKENS), show_progress=False, **alphabet
    )
    core.train_from_iterator(corpus, trainer)
    if not fim:
        text = core.to_str()
        for name, other in zip(FIM_TOKENS, NO_FIM_TOKENS, strict=True):
            text = text.replace(json.dumps(name), json.dumps(other))
        core = Tokenizer.from_str(text)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
