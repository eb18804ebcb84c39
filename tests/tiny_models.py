"""Tiny random causal LMs, built from configs at run time and saved like a user's model.

No weights can be downloaded here, so tests save these to a temporary directory and load
them back through ``from_pretrained`` -- the path a user's model takes -- in full
precision or as bitsandbytes NF4.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

VOCAB = 320
ARCHITECTURES = ("qwen3", "qwen2", "llama", "mistral", "smollm3")

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def config_for(architecture: str) -> transformers.PretrainedConfig:
    if architecture == "qwen3":
        return transformers.Qwen3Config(head_dim=16, **_COMMON)
    if architecture == "qwen2":
        return transformers.Qwen2Config(**_COMMON)
    if architecture == "llama":
        return transformers.LlamaConfig(**_COMMON)
    if architecture == "mistral":
        return transformers.MistralConfig(head_dim=16, **_COMMON)
    if architecture == "smollm3":
        return transformers.SmolLM3Config(**{**_COMMON, "num_hidden_layers": 4})  # one NoPE layer in four
    raise ValueError(architecture)


SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "import os\nclass Settings:\n    def __init__(self):\n        self.path = os.getcwd()\n",
    "for i in range(10):\n    print(i)\n",
    "function greet(name) {\n  return `hello ${name}`;\n}\n",
]


def save_tiny_tokenizer(directory: Path, fim: bool = True) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text round-trips) with a ChatML template and FIM tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = list(SPECIAL_TOKENS + (FIM_TOKENS if fim else ()))
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 16,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHAT_TEMPLATE
    )
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_tiny_model(architecture: str, directory: Path, seed: int = 0) -> Path:
    """A tiny random model and its tokenizer, saved as a user's model directory is."""
    save_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config_for(architecture))
    with torch.no_grad():  # larger than the default init, so logits are far from ties
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory)
    return directory


def load_tiny_model(directory: Path, nf4: bool = False, dtype: torch.dtype = torch.float32):
    kwargs = {"dtype": dtype}
    if nf4:
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = "cpu"
    return transformers.AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()


def save_talkative_model(directory: Path, seed: int = 0) -> Path:
    """A tiny qwen3 that never predicts end-of-sequence (its lm_head row is zero while the
    other logits spread around it), so generation runs to its token limit: long enough to
    cancel, and never empty."""
    save_tiny_model("qwen3", directory, seed=seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id].zero_()
        model.lm_head.weight[model.config.pad_token_id].zero_()
    model.save_pretrained(directory)
    return directory
