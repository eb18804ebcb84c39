"""Completion and explanation prompts, with the tiny byte-level tokenizer."""

from __future__ import annotations

import pytest

from dmem_lsp.prompts import completion_prompt, explain_prompt, is_multiline, trim_suffix_overlap
from tests.tiny_models import save_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    return (
        save_tiny_tokenizer(tmp_path_factory.mktemp("fim")),
        save_tiny_tokenizer(tmp_path_factory.mktemp("chat"), fim=False),
    )


def test_fim_prompt_keeps_the_nearest_text_within_budgets(tokenizers):
    fim, _ = tokenizers
    prefix = "import os\n" * 40 + "def add(a, b):\n    return "
    suffix = "\n\nfor i in range(10):\n    print(i)\n" * 20
    prompt = completion_prompt(fim, prefix, suffix, prefix_tokens=30, suffix_tokens=12)
    ids = prompt.input_ids
    p, s, m = (fim.convert_tokens_to_ids(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    assert prompt.fim and ids[0] == p and ids[-1] == m and ids.count(s) == 1
    before, after = ids[1 : ids.index(s)], ids[ids.index(s) + 1 : -1]
    assert len(before) == 30 and len(after) == 12
    assert fim.decode(before).endswith("def add(a, b):\n    return ")
    assert fim.decode(after) == fim.decode(fim.encode(suffix, add_special_tokens=False)[:12])


def test_chat_prompt_without_fim_tokens(tokenizers):
    _, chat = tokenizers
    prompt = completion_prompt(chat, "x = ", "\nprint(x)", prefix_tokens=64, suffix_tokens=64)
    text = chat.decode(prompt.input_ids)
    assert not prompt.fim
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert "x = <CURSOR>\nprint(x)" in text


def test_explain_prompt_is_a_chat_with_the_code(tokenizers):
    fim, _ = tokenizers
    text = fim.decode(explain_prompt(fim, "return a + b", "def add(a, b):", "python", budget=256).input_ids)
    assert "```python\nreturn a + b\n```" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "before, after, multiline",
    [
        ("", "", True),
        ("    ", "", True),
        ("def f(x):", "", True),
        ("if (ok) {", "", True),
        ("x = compute(", ")", False),
        ("total = ", "", False),
        ("name = 'a'", "  # comment", False),
    ],
)
def test_single_or_multi_line(before, after, multiline):
    assert is_multiline(before, after) is multiline


@pytest.mark.parametrize(
    "text, suffix, expected",
    [
        ("a + b)\n", ")\n", "a + b"),
        ("print(x)", ")", "print(x)"),  # a single character is not an overlap worth trimming
        ("items]:\n    pass", "]:\n    pass\n", "items"),
        ("value", "other", "value"),
        ("", ")", ""),
    ],
)
def test_trailing_text_that_repeats_the_suffix_is_trimmed(text, suffix, expected):
    assert trim_suffix_overlap(text, suffix) == expected
