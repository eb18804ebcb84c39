"""Completion prompts: fill-in-the-middle or the chat template, as the loaded adapter was trained.

The shape is the one the adapter records (its config's ``"prompt"``); an adapter that
records none gets FIM when the tokenizer has the FIM tokens, chat otherwise.

Pure functions over a tokenizer and text; nothing here knows the server or the model.
A prompt keeps a budget of tokens nearest the cursor, so only a character window that
holds that budget is ever tokenized (``_tail``, ``_head``): the cost of a prompt does not
grow with the document. ``window`` cuts that much text around an offset out of a document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "CHAT_MODELS", "FIM_TOKENS", "MAX_CHARS_PER_TOKEN", "SHAPES", "Prompt", "completion_prompt", "explain_prompt",
    "is_multiline",
    "prompt_shape", "recorded_shape", "shape_reason", "trim_suffix_overlap", "window",
]

SHAPES = ("fim", "chat")
"""The prompt shapes of a completion: fill-in-the-middle tokens, or the chat template."""
CHAT_MODELS = frozenset({"Qwen/Qwen3-4B-Instruct-2507"})
"""Models that are only meant to get chat prompts although their tokenizer has FIM tokens
(Qwen3 shares one vocabulary across the family; FIM is trained into the Coder models)."""
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", "do", "then")

CHARS_PER_TOKEN = 4
"""The first guess of characters per token (code runs 3-4 in Qwen's vocabulary); a window
that turns out to hold too few tokens is doubled until it holds enough."""
MAX_CHARS_PER_TOKEN = 32
"""A safe upper bound of characters per token, to cut a document's text before it reaches
the prompt (``window``): a budget of n tokens never needs more than n × 32 characters
except in runs of whitespace or repeated symbols, which then get fewer tokens."""
EDGE_TOKENS = 8
"""Tokens dropped at a window's cut when it falls inside a line: a word or a run of spaces
cut in two tokenizes differently."""
LINE_START = re.compile(r"\n(?=\S)")
"""A newline before a line's first character: every GPT-style pre-tokenizer splits there,
so the text after it tokenizes the same alone as within the document."""
LAST_LINE_START = re.compile(r"(?s:.*)\n(?=\S)")


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    fim: bool
    """True: a fill-in-the-middle prompt; False: a chat prompt."""


def _has_fim(tokenizer) -> bool:
    """Whether every FIM token is in the vocabulary (looked up one by one: ``get_vocab()``
    would build a dict of the whole vocabulary on every completion)."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in FIM_TOKENS]
    return all(i is not None and i != tokenizer.unk_token_id for i in ids)


def _tail(tokenizer, text: str, budget: int) -> list[int]:
    """The last ``budget`` tokens of ``text``, tokenizing only a window at its end.

    The window starts at a line's first character, so the tokens kept are the ones the
    whole text would end with; it is doubled until it holds the budget and a line start
    (``EDGE_TOKENS`` to spare), or reaches ``MAX_CHARS_PER_TOKEN`` a token: a cut inside
    one huge line then drops ``EDGE_TOKENS`` at the cut.
    """
    if budget <= 0:
        return []
    size, limit = (budget + EDGE_TOKENS) * CHARS_PER_TOKEN, (budget + EDGE_TOKENS) * MAX_CHARS_PER_TOKEN
    while True:
        start = max(0, len(text) - size)
        line = LINE_START.search(text, start - 1, start + size // 2) if start > 0 else None
        if line:
            start = line.end()
        ids = tokenizer.encode(text[start:], add_special_tokens=False)
        if start == 0 or size >= limit or line and len(ids) >= budget + EDGE_TOKENS:
            return ids[-budget:]
        size *= 2


def _head(tokenizer, text: str, budget: int) -> list[int]:
    """The first ``budget`` tokens of ``text``, tokenizing only a window at its start
    (ending before a line's first character; doubled as in ``_tail``)."""
    if budget <= 0:
        return []
    size, limit = (budget + EDGE_TOKENS) * CHARS_PER_TOKEN, (budget + EDGE_TOKENS) * MAX_CHARS_PER_TOKEN
    while True:
        end = min(len(text), size)
        line = LAST_LINE_START.match(text, size // 2, end + 1) if end < len(text) else None
        if line:
            end = line.end()
        ids = tokenizer.encode(text[:end], add_special_tokens=False)
        if end == len(text) or size >= limit or line and len(ids) >= budget + EDGE_TOKENS:
            return ids[:budget]
        size *= 2


def window(source: str, offset: int, before_tokens: int, after_tokens: int) -> tuple[str, str]:
    """(the text before ``offset``, the text after it), each cut to what a prompt of
    ``before_tokens`` / ``after_tokens`` tokens can use (``MAX_CHARS_PER_TOKEN`` a token),
    so a huge document is never copied or tokenized whole."""
    before = (before_tokens + EDGE_TOKENS) * MAX_CHARS_PER_TOKEN
    after = (after_tokens + EDGE_TOKENS) * MAX_CHARS_PER_TOKEN
    return source[max(0, offset - before) : offset], source[offset : offset + after]


def shape_reason(tokenizer, recorded: str | None, why: str) -> tuple[str, str]:
    """(the shape completions take, why): ``recorded_shape``'s answer, or the tokenizer's."""
    if recorded is not None:
        return recorded, why
    if _has_fim(tokenizer):
        return "fim", f"{why}, and the tokenizer has the FIM tokens"
    return "chat", f"{why}, and the tokenizer has no FIM tokens"


def prompt_shape(tokenizer, recorded: str | None = None) -> str:
    """The shape completions take: ``recorded`` (the one the loaded adapter was trained on,
    ``"fim"`` or ``"chat"``) when given, else FIM when the tokenizer has every FIM token."""
    if recorded is not None:
        if recorded not in SHAPES:
            raise ValueError(f"prompt shape {recorded!r}: must be one of {', '.join(SHAPES)}")
        return recorded
    return "fim" if _has_fim(tokenizer) else "chat"


def recorded_shape(meta: dict | None, model_id: str = "") -> tuple[str | None, str]:
    """(shape, why) for an adapter's metadata (``memory.read_adapter``'s third value; None:
    a fresh, untrained adapter) on the model ``model_id``.

    The shape the trainer recorded (``"prompt"``) wins. The official release's adapters were
    trained by their authors on chat conversations through the instruct model's template, so
    they get chat, and so does any adapter on a model in ``CHAT_MODELS``. Otherwise None:
    ``prompt_shape``'s rule (the tokenizer's FIM tokens) decides."""
    recorded = meta.get("prompt") if meta is not None else None
    if recorded in SHAPES:
        return recorded, f"the adapter was trained on {recorded} prompts (its config's \"prompt\")"
    if recorded is not None:
        return None, f"the adapter's config names an unknown prompt shape {recorded!r}"
    if meta is not None and meta.get("format") == "official":
        return "chat", "an official δ-mem release adapter, trained on chat conversations"
    if model_id in CHAT_MODELS:
        return "chat", f"{model_id} is a chat model, not trained for fill-in-the-middle (see README, 'Prompts')"
    what = "a fresh adapter" if meta is None else "the adapter"
    return None, f"{what} records no prompt shape"


def completion_prompt(
    tokenizer, prefix: str, suffix: str, prefix_tokens: int, suffix_tokens: int, shape: str | None = None
) -> Prompt:
    """The prompt for completing at the cursor, keeping the last ``prefix_tokens`` of the
    text before it and the first ``suffix_tokens`` of the text after it, in ``shape``
    (``"fim"``, ``"chat"``, or None: ``prompt_shape``'s rule). FIM asked of a tokenizer
    without the FIM tokens is refused."""
    shape = prompt_shape(tokenizer, shape)
    if shape == "fim" and not _has_fim(tokenizer):
        raise ValueError("a fill-in-the-middle prompt needs the tokenizer's FIM tokens, and this one has none")
    before, after = _tail(tokenizer, prefix, prefix_tokens), _head(tokenizer, suffix, suffix_tokens)
    if shape == "fim":
        fim_prefix, fim_suffix, fim_middle = (tokenizer.convert_tokens_to_ids(t) for t in FIM_TOKENS)
        return Prompt([fim_prefix, *before, fim_suffix, *after, fim_middle], fim=True)
    instruction = (
        "Complete the code at <CURSOR>. Reply with only the text to insert there.\n\n"
        + tokenizer.decode(before)
        + "<CURSOR>"
        + tokenizer.decode(after)
    )
    return Prompt(_chat(tokenizer, instruction), fim=False)


def explain_prompt(tokenizer, code: str, context: str, language: str, budget: int) -> Prompt:
    """A chat prompt asking for a markdown explanation of ``code``."""
    code = tokenizer.decode(_head(tokenizer, code, budget))
    context = tokenizer.decode(_tail(tokenizer, context, budget // 2)) if context else ""
    question = f"Explain this {language} code briefly, in markdown.\n\n```{language}\n{code}\n```"
    if context:
        question += f"\n\nIt appears in:\n```{language}\n{context}\n```"
    return Prompt(_chat(tokenizer, question), fim=False)


def _chat(tokenizer, content: str) -> list[int]:
    messages = [{"role": "user", "content": content}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return list(ids)


def is_multiline(line_before: str, line_after: str) -> bool:
    """Multi-line when the rest of the line is empty and the cursor starts a line or a block."""
    if line_after.strip():
        return False
    stripped = line_before.rstrip()
    return not stripped or stripped.endswith(BLOCK_OPENERS)


def trim_suffix_overlap(text: str, suffix: str, min_overlap: int = 2) -> str:
    """Drop the end of ``text`` that repeats the start of ``suffix`` (the code already there)."""
    head = suffix.lstrip()
    for size in range(min(len(text), len(head)), min_overlap - 1, -1):
        if text.endswith(head[:size]):
            return text[: len(text) - size]
    return text
