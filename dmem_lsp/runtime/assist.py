"""What a completion and an explanation are, in terms of text and the engine.

Plain functions that run on the inference worker: they take document text and settings,
build the prompt, run the engine and shape its output. They know nothing of LSP, so the
server's handlers stay thin and these can be tested and benchmarked without a server.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dmem_lsp.runtime.prompts import completion_prompt, explain_prompt, is_multiline, trim_suffix_overlap
from dmem_lsp.runtime.settings import CompletionSettings, ExplainSettings
from dmem_lsp.workspace import texts

if TYPE_CHECKING:
    from dmem_lsp.runtime.engine import Engine

__all__ = ["Answer", "complete", "explain", "word_before", "tokenize_for_write", "write_memory", "NO_EXPLANATION"]

NO_EXPLANATION = "_The model gave no explanation._"
_WORD = re.compile(r"[\w$]+$")


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    """Tokens generated."""
    cancelled: bool


def complete(
    engine: Engine,
    prefix: str,
    suffix: str,
    settings: CompletionSettings,
    should_stop: Callable[[], bool] = lambda: False,
    on_token: Callable[[int], None] = lambda count: None,
) -> Answer:
    """The text to insert between ``prefix`` and ``suffix`` (greedy).

    Single-line when the cursor has code after it on its line or sits mid-statement;
    then generation ends at the newline and only the rest of the line is compared for
    overlap. Multi-line otherwise, ending at ``settings.stop`` or ``max_tokens``.
    """
    line_before = prefix.rsplit("\n", 1)[-1]
    line_after = suffix.split("\n", 1)[0]
    multiline = is_multiline(line_before, line_after)
    prompt = completion_prompt(
        engine.tokenizer, prefix, suffix, settings.prefix_tokens, settings.suffix_tokens, engine.active.prompt
    )
    stop = list(settings.stop) if multiline else ["\n"]
    generation = engine.generate(
        prompt.input_ids, max_new_tokens=settings.max_tokens, stop=stop, should_stop=should_stop, on_token=on_token
    )
    text = trim_suffix_overlap(generation.text, suffix if multiline else line_after)
    return Answer(text, len(generation.token_ids), generation.cancelled)


def word_before(prefix: str) -> str:
    """The word the cursor ends (letters, digits, ``_`` and ``$``), or "" after anything else.

    Completion clients (eglot, ALE, VS Code's suggest widget) filter items by this word and
    replace it on accepting, so an item starts with it and its edit starts where it does.
    """
    match = _WORD.search(prefix[-256:])
    return match.group(0) if match else ""


def explain(
    engine: Engine,
    code: str,
    context: str,
    language: str,
    settings: ExplainSettings,
    should_stop: Callable[[], bool] = lambda: False,
    on_token: Callable[[int], None] = lambda count: None,
) -> Answer:
    """A markdown explanation of ``code``, which appears in ``context``."""
    prompt = explain_prompt(engine.tokenizer, code, context, language, settings.code_tokens)
    generation = engine.generate(
        prompt.input_ids, max_new_tokens=settings.max_tokens, should_stop=should_stop, on_token=on_token
    )
    return Answer(generation.text.strip() or NO_EXPLANATION, len(generation.token_ids), generation.cancelled)


def tokenize_for_write(engine: Engine, text: str, limit: int | None = None) -> list[int]:
    """The token ids a write pass over ``text`` takes (the first ``limit`` of them)."""
    return texts.write_ids(engine.tokenizer, text, limit)


def write_memory(engine: Engine, store: str, ids: list[int]) -> dict:
    """One write pass of ``ids`` into ``store``; returns every store's state afterwards.

    With a segment-write (SSW) adapter the pass is one segment: it is written once, as the
    mean over its tokens. Only the last token's logits are computed: a write needs none, and
    the whole vocabulary for every token would double a small model's pass.
    """
    import torch

    input_ids = torch.tensor([ids], device=engine.device)
    segments = torch.zeros_like(input_ids) if engine.memory.config.write == "segment" else None
    with torch.inference_mode(), engine.memory.writing(store=store, segments=segments):
        engine.model(input_ids=input_ids, use_cache=False, logits_to_keep=1)
    return engine.memory.states()
