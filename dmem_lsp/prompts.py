"""Completion prompts: fill-in-the-middle when the tokenizer has FIM tokens, chat otherwise.

Pure functions over a tokenizer and text; nothing here knows the server or the model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIM_TOKENS", "Prompt", "completion_prompt", "explain_prompt", "is_multiline", "trim_suffix_overlap"]

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", "do", "then")


@dataclass(frozen=True)
class Prompt:
    input_ids: list[int]
    fim: bool
    """True: a fill-in-the-middle prompt; False: a chat prompt."""


def _has_fim(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in FIM_TOKENS)


def _tail(tokenizer, text: str, budget: int) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[-budget:] if budget > 0 else []


def _head(tokenizer, text: str, budget: int) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[:budget] if budget > 0 else []


def completion_prompt(tokenizer, prefix: str, suffix: str, prefix_tokens: int, suffix_tokens: int) -> Prompt:
    """The prompt for completing at the cursor, keeping the last ``prefix_tokens`` of the
    text before it and the first ``suffix_tokens`` of the text after it."""
    before, after = _tail(tokenizer, prefix, prefix_tokens), _head(tokenizer, suffix, suffix_tokens)
    if _has_fim(tokenizer):
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
