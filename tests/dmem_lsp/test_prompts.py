"""Completion and explanation prompts, with the tiny byte-level tokenizer."""

from __future__ import annotations

import pytest

from dmem_lsp.runtime.prompts import (
    completion_prompt,
    explain_prompt,
    is_multiline,
    recorded_shape,
    shape_reason,
    trim_suffix_overlap,
    window,
)
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


# -- a prompt's cost does not grow with the document --------------------------------------


class CountingTokenizer:
    """The real tokenizer, counting the characters it is asked to encode."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.encoded = tokenizer, 0

    def encode(self, text: str, **kwargs):
        self.encoded += len(text)
        return self.tokenizer.encode(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


CODE = (
    "def add(a, b):\n    return a + b\n\nclass Settings:\n    def __init__(self):\n"
    "        self.path = os.getcwd()\n\nfor i in range(10):\n    print(i)  # «ünïcode»\n"
)


def _full_prompt(tokenizer, prefix, suffix, prefix_tokens, suffix_tokens):
    """What the prompt was before windows: both sides tokenized whole, then trimmed."""
    before = tokenizer.encode(prefix, add_special_tokens=False)[-prefix_tokens:] if prefix_tokens else []
    after = tokenizer.encode(suffix, add_special_tokens=False)[:suffix_tokens]
    p, s, m = (tokenizer.convert_tokens_to_ids(t) for t in ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    return [p, *before, s, *after, m]


@pytest.mark.parametrize("cut", [0, 1, 7, 40, 123], ids=lambda cut: f"cut{cut}")
def test_windowed_prompt_is_the_prompt_of_the_whole_text(tokenizers, cut):
    fim, _ = tokenizers
    text = CODE * 300  # ~40 K characters: small enough to tokenize whole as the reference
    offset = len(text) // 2 + cut
    prefix, suffix = text[:offset], text[offset:]
    for budgets in ((1536, 512), (30, 12), (0, 5), (5000, 5000)):
        assert completion_prompt(fim, prefix, suffix, *budgets).input_ids == _full_prompt(fim, prefix, suffix, *budgets)


def test_a_window_grows_when_its_text_holds_few_tokens(tokenizers):
    """Long runs of spaces are long tokens: the first window holds too few and is doubled."""
    fim, _ = tokenizers
    prefix = ("x = 1" + " " * 3000 + "\n") * 10
    suffix = ("\t" * 2000 + "y\n") * 10
    assert completion_prompt(fim, prefix, suffix, 300, 300).input_ids == _full_prompt(fim, prefix, suffix, 300, 300)


def test_a_huge_document_is_not_tokenized_whole(tokenizers):
    """16 MB of code, the cursor near its end: the prompt is the one for the window cut out
    around the cursor, and the tokenizer sees a few thousand characters, not millions."""
    fim, _ = tokenizers
    source = CODE * (16_000_000 // len(CODE))
    offset = len(source) - 1000
    counting = CountingTokenizer(fim)
    prefix, suffix = window(source, offset, 1536, 512)
    assert len(prefix) + len(suffix) < 100_000
    prompt = completion_prompt(counting, prefix, suffix, 1536, 512)
    assert counting.encoded < 20_000, f"{counting.encoded} characters tokenized"
    small = source[offset - 50_000 : offset + 1000]
    assert prompt.input_ids == completion_prompt(fim, small[:50_000], small[50_000:], 1536, 512).input_ids

    counting.encoded = 0
    explained = explain_prompt(counting, source, source, "python", budget=1024)
    assert counting.encoded < 20_000, f"{counting.encoded} characters tokenized"
    assert (
        explained.input_ids == explain_prompt(fim, source[:20_000], source[-20_000:], "python", budget=1024).input_ids
    )


def test_the_shape_asked_for_wins_over_the_tokenizer(tokenizers):
    fim, chat = tokenizers
    as_chat = completion_prompt(fim, "x = ", "\nprint(x)", 64, 64, shape="chat")
    assert not as_chat.fim and fim.decode(as_chat.input_ids).startswith("<|im_start|>user\n")
    assert fim.decode(as_chat.input_ids) == chat.decode(completion_prompt(chat, "x = ", "\nprint(x)", 64, 64).input_ids)
    assert completion_prompt(fim, "x = ", "", 64, 64, shape="fim").fim
    assert completion_prompt(fim, "x = ", "", 64, 64, shape=None).fim  # today's rule: the tokenizer's FIM tokens
    with pytest.raises(ValueError, match="FIM tokens"):
        completion_prompt(chat, "x = ", "", 64, 64, shape="fim")
    with pytest.raises(ValueError, match="'raw'"):
        completion_prompt(fim, "x = ", "", 64, 64, shape="raw")


def test_the_adapter_record_decides_the_shape_and_says_why(tokenizers):
    fim, chat = tokenizers
    assert recorded_shape({"prompt": "fim"}, "Qwen/Qwen3-4B-Instruct-2507")[0] == "fim"  # the trainer's record wins
    assert recorded_shape({"prompt": "chat"})[0] == "chat"
    assert recorded_shape({"format": "official"}) == (
        "chat", "an official δ-mem release adapter, trained on chat conversations"
    )
    assert recorded_shape(None, "Qwen/Qwen3-4B-Instruct-2507")[0] == "chat"  # the default model is a chat model
    assert recorded_shape({"format_version": 1}, "Qwen/Qwen3-4B-Instruct-2507")[0] == "chat"
    assert recorded_shape({"format_version": 1}, "some/coder") == (None, "the adapter records no prompt shape")
    assert recorded_shape({"prompt": "raw"})[0] is None
    assert shape_reason(fim, None, "a fresh adapter records no prompt shape") == (
        "fim", "a fresh adapter records no prompt shape, and the tokenizer has the FIM tokens"
    )
    assert shape_reason(chat, None, "x")[0] == "chat" and shape_reason(chat, "chat", "why") == ("chat", "why")
