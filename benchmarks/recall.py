"""Recall from δ-mem with the history absent: the paper's no-context setting, small and on CPU.

The language. A synthetic "project conventions" language: 24 keys in four families
(numbers, naming styles, directories, tools); the keys of a family draw their values from
the family's one shared value set, so knowing which values appeared in a history says
nothing about which key holds which value. Facts ("indent = 4", "# convention : tests_dir
= qa/", "linter : ruff") sit in file-like history text among distractor lines: code
(``x = 3`` assigns a value token to a non-key), comments that name a key without a value,
diff hunks, file headers, imports of tool names. Half the episodes re-assign one or more
keys later in the history; the latest value is the answer. A query is ``ask <key> =`` and
the answer is one token. Every word is one token id (no tokenizer).

The run, all in one process unless said otherwise:

1. a tiny Qwen3 (built from ``transformers.Qwen3Config``, random init, nothing downloaded)
   is trained with the ordinary next-token loss on every token of ``history + queries with
   answers`` until it looks facts up in context ((c) ≥ 0.95 at K = 6 on validation
   episodes), then frozen and saved with ``save_pretrained``;
2. δ-mem is attached with ``memory.attach`` (the product's code) and trained in episode
   mode: zero the state, write the history (a write pass), read every query of the episode
   with the history absent (a read-only pass), cross-entropy on the answers, by the
   library's trainer (``memory.training.train``, which ``dmem-lsp adapter train`` runs).
   Only δ-mem's parameters train; the backbone is checked bit-identical afterwards. A step
   trains on 16 episodes at once (``TrainOptions.rows``), each written into and read from a
   state of its own (the same loss as the episodes one by one, tested in
   tests/memory/test_batching.py), 50 steps of warm-up then a cosine decay, the episodes
   in curriculum order (few facts first). TSW, SSW (<bos> and each history line one
   segment) and MSW (4 state heads) get
   the same budget (2,400 steps, 38,400 episodes), each in a process of its own, ``--jobs``
   at a time (the frozen backbone is saved once and loaded by each);
3. held-out episodes (never seen in training or early stopping) give the table: (a) the
   frozen backbone with the query alone; (b) δ-mem with the history only in memory, for
   K = 1, 2, 4, 8, 16 facts; (b-overwrite) the re-assigned keys; binding-only (queries whose
   episode holds another key of the same family with another value); (c) the backbone with
   the history in context; (b′) the headline adapter and the written states saved (adapter
   with ``memory.save_adapter``, states with the product's ``WorkspaceStore.save_states``),
   reloaded in a fresh Python process and evaluated again; the controls zero state and
   another episode's state, which must stay at chance.

Re-run (about 10 minutes on a 2-core CPU; ``--quick`` is a smoke run of about a minute
whose numbers mean nothing):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/recall.py [--seed 0] [--threads 1] [--jobs N] [--out DIR]

Progress goes to stderr, the table (markdown) to stdout; ``--out`` also writes it to
``recall.md`` and everything, learning curves included, to ``recall.json``. Results are
deterministic for a given seed, ``--threads`` and ``--jobs`` (the backbone trains alone, on
``threads × jobs`` threads). The headline variant (the one whose
(b′), overwrite, binding and control rows are shown) is the one with the best (b) on the
validation episodes, never on the held-out ones.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import memory  # noqa: E402
from memory.episodes import Episode  # noqa: E402
from memory.training import CURVE_CSV, TrainOptions, train  # noqa: E402

log = logging.getLogger("recall")

# ----------------------------------------------------------------------------- the language

FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "number": (
        ("indent", "tab_width", "max_args", "max_depth", "retries", "workers"),
        ("1", "2", "3", "4", "5", "6", "7", "8"),
    ),
    "naming": (
        ("naming_functions", "naming_classes", "naming_constants", "naming_files", "naming_variables",
         "naming_modules"),
        ("snake_case", "camelCase", "PascalCase", "kebab-case", "UPPER_CASE", "flatcase"),
    ),
    "path": (
        ("tests_dir", "docs_dir", "source_dir", "build_dir", "scripts_dir", "fixtures_dir"),
        ("qa/", "tests/", "spec/", "src/", "lib/", "docs/", "build/", "tools/"),
    ),
    "tool": (
        ("formatter", "linter", "type_checker", "test_runner", "import_sorter", "doc_builder"),
        ("black", "ruff", "mypy", "pytest", "isort", "sphinx"),
    ),
}
SPECIALS = ("<pad>", "<bos>", "<nl>", "ask", "=", ":", "#", "convention")
IDENTIFIERS = ("x", "y", "n", "data", "items", "result", "path", "config", "name", "total")
WORDS = ("fix", "later", "the", "parser", "cache", "bug", "see", "run", "note", "slow", "TODO", "why")
CODE = ("def", "return", "for", "in", "range", "print", "import", "(", ")", "+", "-", "@@", "file")
FILES = ("setup.cfg", "pyproject.toml", "STYLE.md", "main.py", "utils.py", ".editorconfig", "Makefile")
KS = (1, 2, 4, 8, 16)
MAX_K = 16
STORE = "conventions"


class Vocab:
    """Every word of the language, one token id each."""

    def __init__(self) -> None:
        words = list(SPECIALS)
        for keys, values in FAMILIES.values():
            words += [w for w in (*keys, *values) if w not in words]
        words += [w for w in (*IDENTIFIERS, *WORDS, *CODE, *FILES) if w not in words]
        self.words = words
        self.ids = {w: i for i, w in enumerate(words)}
        self.family_of: dict[int, str] = {}  # key id -> family
        self.values_of: dict[str, tuple[int, ...]] = {}  # family -> value ids
        for family, (keys, values) in FAMILIES.items():
            self.values_of[family] = tuple(self.ids[v] for v in values)
            for key in keys:
                self.family_of[self.ids[key]] = family
        self.keys = tuple(self.family_of)

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, word: str) -> int:
        return self.ids[word]

    def encode(self, words: Sequence[str]) -> tuple[int, ...]:
        return tuple(self.ids[w] for w in words)

    def chance(self, key: int) -> float:
        return 1.0 / len(self.values_of[self.family_of[key]])


@dataclass(frozen=True)
class Story:
    """One episode: history lines (token ids, each ending in <nl>), and what is asked."""

    lines: tuple[tuple[int, ...], ...]
    facts: tuple[tuple[int, int], ...]
    """(key, latest value) for every key the history assigns, in query order."""
    reassigned: frozenset[int] = field(default_factory=frozenset)
    """Keys assigned more than once (an older value first, then the answer)."""

    @property
    def history(self) -> list[int]:
        """<bos> and every line: what a write pass writes, and what (c) puts in context."""
        return [1, *(t for line in self.lines for t in line)]

    @property
    def segments(self) -> list[int]:
        """A segment id per history token: <bos> one segment, then one per line (as
        ``story_episode``'s pieces, which the trainer writes one segment each)."""
        return [0, *(i + 1 for i, line in enumerate(self.lines) for _ in line)]

    def binding(self, vocab: Vocab) -> set[int]:
        """Keys whose family has another key in this episode holding another value."""
        return {
            key
            for key, value in self.facts
            if any(vocab.family_of[k] == vocab.family_of[key] and v != value for k, v in self.facts if k != key)
        }


def fact_line(vocab: Vocab, key: int, value: int, rng: random.Random) -> tuple[int, ...]:
    k, v = vocab.words[key], vocab.words[value]
    form = rng.randrange(3)
    words = [k, "=", v] if form == 0 else ["#", "convention", ":", k, "=", v] if form == 1 else [k, ":", v]
    return vocab.encode([*words, "<nl>"])


def distractor_line(vocab: Vocab, rng: random.Random) -> tuple[int, ...]:
    """Code, comments, diff hunks and file headers; value tokens and key names occur, never a fact."""
    ident, number = rng.choice(IDENTIFIERS), rng.choice(FAMILIES["number"][1])
    key = vocab.words[rng.choice(vocab.keys)]
    value = vocab.words[rng.choice(vocab.values_of[rng.choice(list(FAMILIES))])]
    forms = (
        ["def", ident, "(", rng.choice(IDENTIFIERS), ")", ":"],
        ["return", ident, "+", number],
        [ident, "=", number],
        [ident, "=", value],
        ["for", ident, "in", "range", "(", number, ")", ":"],
        ["print", "(", ident, ")"],
        ["import", rng.choice(FAMILIES["tool"][1])],
        ["#", *rng.sample(WORDS, 3)],
        ["#", "TODO", rng.choice(WORDS), key],
        ["#", "see", value],
        ["@@", "-", number, "+", rng.choice(FAMILIES["number"][1]), "@@"],
        [rng.choice("+-"), ident, "=", number],
        ["file", rng.choice(FILES)],
    )
    return vocab.encode([*rng.choice(forms), "<nl>"])


def make_story(
    vocab: Vocab, k: int, rng: random.Random, reassign: float = 0.5, families: int | None = None
) -> Story:
    """K distinct keys with values from their families, distractors between, maybe re-assignments.

    ``families``: draw the keys from that many families chosen at random (enough to hold K
    keys) instead of from all of them."""
    pool = vocab.keys
    if families is not None:
        chosen = rng.sample(list(FAMILIES), families)
        pool = tuple(key for key in vocab.keys if vocab.family_of[key] in chosen)
        if len(pool) < k:
            raise ValueError(f"{families} families hold {len(pool)} keys, fewer than K = {k}")
    keys = rng.sample(pool, k)
    final = {key: rng.choice(vocab.values_of[vocab.family_of[key]]) for key in keys}
    again = rng.sample(keys, rng.randint(1, max(1, k // 4))) if rng.random() < reassign else []
    events = [*keys, *again]  # a key listed twice is assigned twice: an older value, then the final one
    rng.shuffle(events)
    seen: dict[int, int] = {key: events.count(key) for key in again}
    lines = []
    for key in events:
        if seen.get(key, 0) > 1:
            seen[key] -= 1
            old = rng.choice([v for v in vocab.values_of[vocab.family_of[key]] if v != final[key]])
            lines.append(fact_line(vocab, key, old, rng))
        else:
            lines.append(fact_line(vocab, key, final[key], rng))
    for _ in range(rng.randint(1, 2 + k // 2)):
        lines.insert(rng.randint(0, len(lines)), distractor_line(vocab, rng))
    order = list(keys)
    rng.shuffle(order)
    return Story(tuple(lines), tuple((key, final[key]) for key in order), frozenset(again))


def query(vocab: Vocab, key: int) -> list[int]:
    return [1, vocab["ask"], key, vocab["="]]


# ----------------------------------------------------------------------------- the backbone


HIDDEN, LAYERS, HEADS = 64, 4, 4


def build_backbone(vocab: Vocab, seed: int) -> Any:
    """A tiny Qwen3 with random weights, built from its config (nothing is downloaded)."""
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HIDDEN // HEADS,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.Qwen3ForCausalLM(config).float()


def padded(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, [B, T] each."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def lm_sequence(vocab: Vocab, story: Story, rng: random.Random, asks: int = 4) -> list[int]:
    """The history, then ``asks``·K answered queries (every key once, then keys at random):
    what the backbone learns on, with the loss on every token."""
    asked = [*story.facts, *(rng.choice(story.facts) for _ in range((asks - 1) * len(story.facts)))]
    return [*story.history, *(t for key, value in asked for t in (vocab["ask"], key, vocab["="], value, 2))]


@torch.no_grad()
def in_context_predictions(model: Any, vocab: Vocab, stories: Sequence[Story]) -> list[list[int]]:
    """(c): the history in context, then ``ask <key> =``; the argmax over the whole vocabulary."""
    out = []
    for story in stories:
        rows = torch.tensor([[*story.history, vocab["ask"], key, vocab["="]] for key, _ in story.facts])
        logits = model(input_ids=rows, use_cache=False, logits_to_keep=1).logits[:, -1]
        out.append(logits.argmax(-1).tolist())
    return out


def accuracy(stories: Sequence[Story], predictions: Sequence[Sequence[int]]) -> float:
    pairs = [(p, v) for s, ps in zip(stories, predictions, strict=True) for p, (_, v) in zip(ps, s.facts, strict=True)]
    return sum(p == v for p, v in pairs) / len(pairs)


@dataclass(frozen=True)
class BackboneOptions:
    max_steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 50
    eval_every: int = 50
    curriculum: int = 25
    """The largest K trained on grows by one every this many steps, from 1 to 16."""
    target: float = 0.95
    """Stop once (c) at K = 6 reaches this on the validation episodes."""


def backbone_story(vocab: Vocab, k: int, rng: random.Random) -> Story:
    """A training history for the backbone: its K keys come from few families (one more than
    K needs, at most), so most queries have a key of the same family with another value in
    the history. Answering "a value of the right family that appeared" then earns little, and
    the lookup by key forms sooner: with keys from all families, seed 1 stayed at (c) ≈ 0.70
    for 700 steps; with these it reached 0.95 in 550. Evaluation episodes draw from all
    families."""
    per_family = min(len(keys) for keys, _ in FAMILIES.values())
    needed = -(-k // per_family)
    return make_story(vocab, k, rng, families=min(len(FAMILIES), needed + rng.randint(0, 1)))


def train_backbone(model: Any, vocab: Vocab, validation: Sequence[Story], options: BackboneOptions, seed: int) -> dict:
    """Next-token loss on every token of history + answered queries, until (c) at K = 6 is reached."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / options.warmup))
    history = []
    step, score, start = 0, 0.0, time.perf_counter()
    while step < options.max_steps:
        model.train()
        k_max = min(MAX_K, 1 + step // options.curriculum)  # short histories first
        stories = [backbone_story(vocab, rng.randint(1, k_max), rng) for _ in range(options.batch)]
        ids, mask = padded([lm_sequence(vocab, s, rng) for s in stories])
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % options.eval_every == 0 or step == options.max_steps:
            model.eval()
            score = accuracy(validation, in_context_predictions(model, vocab, validation))
            history.append((step, round(loss.item(), 4), score))
            log.info("backbone step %d: loss %.3f, (c) at K=6 on validation %.3f (%.0fs)",
                     step, loss.item(), score, time.perf_counter() - start)
            if score >= options.target:
                break
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return {"steps": step, "validation_c_k6": score, "curve": history, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- δ-mem

VARIANTS = {
    "TSW": memory.DeltaMemConfig(rank=8, write="token"),
    "SSW": memory.DeltaMemConfig(rank=8, write="segment"),
    "MSW": memory.DeltaMemConfig(rank=8, write="token", state_heads=4),
}


def write_history(mem: memory.Memory, story: Story) -> None:
    """Zero every store, then one write pass of the history into ``conventions`` (as the server writes)."""
    mem.reset()
    segments = torch.tensor([story.segments]) if mem.config.write == "segment" else None
    with mem.writing(STORE, segments=segments):
        mem.model(input_ids=torch.tensor([story.history]), use_cache=False, logits_to_keep=1)


def read_logits(mem: memory.Memory, vocab: Vocab, keys: Sequence[int]) -> torch.Tensor:
    """A read-only pass: one row ``<bos> ask <key> =`` per key, the history absent. [len(keys), V]"""
    rows = torch.tensor([query(vocab, key) for key in keys])
    return mem.model(input_ids=rows, use_cache=False, logits_to_keep=1).logits[:, -1]


def story_episode(vocab: Vocab, story: Story) -> Episode:
    """A story as the library's training episode: history pieces <bos> and then one per line
    (one segment each under SSW), and every query of the story read from it."""
    reads = tuple((tuple(query(vocab, key)), (value,)) for key, value in story.facts)
    return Episode(
        history=((1,), *story.lines), query=reads[0][0], target=reads[0][1], reads=reads[1:]
    )


@dataclass(frozen=True)
class MemoryOptions:
    steps: int = 2400
    """Optimizer steps."""
    batch: int = 16
    """Episodes per step, written and read together, each with its own state."""
    lr: float = 6e-3
    warmup: int = 50
    eval_every: int = 300
    curriculum: int = 25
    """The largest K trained on grows by one every this many steps, from 2 to 16."""


def train_memory(
    mem: memory.Memory, vocab: Vocab, validation: Sequence[Story], options: MemoryOptions, seed: int, output: Path
) -> dict:
    """Episode training with the library's trainer (``memory.training.train``, what
    ``dmem-lsp adapter train`` runs): ``batch`` independent rows per step, warm-up then a
    cosine decay, the episodes in curriculum order (few facts first); the validation
    episodes give the held-out loss of the curve. The adapter is written to ``output``."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    stories = [
        make_story(vocab, rng.randint(1, min(MAX_K, 2 + step // options.curriculum)), rng)
        for step in range(1, options.steps + 1)
        for _ in range(options.batch)
    ]
    train_options = TrainOptions(
        steps=options.steps, lr=options.lr, rows=options.batch, warmup_steps=options.warmup, schedule="cosine",
        shuffle=False, write_tokens=1 << 16, write_chunk_tokens=0, eval_every=options.eval_every, seed=seed,
        progress=False,
    )
    start = time.perf_counter()
    train(
        mem, [story_episode(vocab, s) for s in stories], [story_episode(vocab, s) for s in validation],
        train_options, output, base_model_id="recall-benchmark",
    )
    with (output / CURVE_CSV).open() as f:
        curve = [
            (int(row["step"]), float(row["train_loss"] or "nan"), float(row["eval_loss_memory"]))
            for row in csv.DictReader(f) if row["eval_loss_memory"]
        ]
    for param in mem.parameters():
        param.requires_grad_(False)
    return {
        "steps": options.steps, "episodes": options.steps * options.batch, "curve": curve,
        "seconds": time.perf_counter() - start,
    }


TRAINING_ORDER = ("MSW", "TSW", "SSW")
"""Slowest first, so that parallel jobs end close together."""


@torch.no_grad()
def memory_predictions(
    mem: memory.Memory, vocab: Vocab, stories: Sequence[Story], written: Sequence[Story] | None = None
) -> list[list[int]]:
    """(b): write each story's history (or ``written``'s: the other-episode control), read its queries."""
    out = []
    for i, story in enumerate(stories):
        write_history(mem, story if written is None else written[i])
        out.append(read_logits(mem, vocab, [key for key, _ in story.facts]).argmax(-1).tolist())
    mem.reset()
    return out


@torch.no_grad()
def query_alone_predictions(model: Any, vocab: Vocab, stories: Sequence[Story]) -> list[list[int]]:
    """(a): the frozen backbone, no memory, the query alone."""
    rows = [torch.tensor([query(vocab, key) for key, _ in s.facts]) for s in stories]
    return [model(input_ids=r, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1).tolist() for r in rows]


# ----------------------------------------------------------------------------- scores


@dataclass
class Cell:
    """Accuracy over some queries, with the chance level of those same queries."""

    correct: int = 0
    total: int = 0
    chance_sum: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    @property
    def chance(self) -> float | None:
        return self.chance_sum / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "chance": self.chance, "queries": self.total}


def score(vocab: Vocab, stories: Sequence[Story], predictions: Sequence[Sequence[int]], only: str = "all") -> Cell:
    """``only``: "all" queries, "overwrite" (re-assigned keys) or "binding" (see ``Story.binding``)."""
    cell = Cell()
    for story, predicted in zip(stories, predictions, strict=True):
        chosen = {"all": None, "overwrite": story.reassigned, "binding": story.binding(vocab)}[only]
        for p, (key, value) in zip(predicted, story.facts, strict=True):
            if chosen is None or key in chosen:
                cell.correct += int(p == value)
                cell.total += 1
                cell.chance_sum += vocab.chance(key)
    return cell


def follows(stories: Sequence[Story], written: Sequence[Story], predictions: Sequence[Sequence[int]]) -> float | None:
    """Other-episode control: how often the answer is the value the *written* episode holds for the key."""
    hits = total = 0
    for story, other, predicted in zip(stories, written, predictions, strict=True):
        held = dict(other.facts)
        for p, (key, _) in zip(predicted, story.facts, strict=True):
            if key in held:
                hits += int(p == held[key])
                total += 1
    return hits / total if total else None


# ----------------------------------------------------------------------------- (b′): a fresh process

STATE_NAME = "state.safetensors"


def state_file(directory: Path) -> Any:
    """The product's state file (``dmem_lsp.workspace.store.WorkspaceStore``), kept in ``directory``
    instead of the user's data folder: its save and load code is the product's, its place ours."""
    from dmem_lsp.workspace.store import WorkspaceStore

    store = WorkspaceStore(directory)
    store.state_path = directory / STATE_NAME
    return store


def fingerprint(backbone_sha256: str, adapter_dir: Path, config: memory.DeltaMemConfig) -> dict[str, Any]:
    adapter = json.loads((adapter_dir / memory.adapter_io.CONFIG_NAME).read_text())
    return {
        "backbone": {"id": "recall-benchmark", "sha256": backbone_sha256},
        "adapter_sha256": adapter["weights_sha256"],
        "config": config.to_dict(),
    }


def save_for_replay(
    directory: Path, mem: memory.Memory, vocab: Vocab, tests: dict[int, list[Story]], backbone_sha256: str
) -> dict[str, list[int]]:
    """Write every held-out history, keep each written state; save adapter, states and queries
    (beside the backbone and its ``backbone_sha256``, which ``run`` saved there first)."""
    adapter_dir = memory.save_adapter(mem, directory / "adapter", base_model_id="recall-benchmark")
    states, tokens, queries = {}, {}, {}
    with torch.no_grad():
        for k, stories in tests.items():
            for i, story in enumerate(stories):
                name = f"k{k}_{i}"
                write_history(mem, story)
                states[name] = mem.states()[STORE]
                tokens[name] = len(story.history)
                queries[name] = [key for key, _ in story.facts]
    mem.reset()
    state_file(directory).save_states(states, fingerprint(backbone_sha256, adapter_dir, mem.config), tokens)
    (directory / "queries.json").write_text(json.dumps(queries, sort_keys=True))
    return queries


@torch.no_grad()
def replay(directory: Path) -> dict[str, Any]:
    """In a fresh process: load backbone, adapter and states from disk, read every query."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(directory / "backbone").eval()
    mem = memory.load_adapter(model, directory / "adapter")
    expected = fingerprint((directory / "backbone_sha256").read_text(), directory / "adapter", mem.config)
    states, problem = state_file(directory).load_states(expected, move_aside=False)
    if states is None:
        raise SystemExit(f"replay: no usable state file in {directory}: {problem}")
    vocab = Vocab()
    predictions = {}
    for name, keys in json.loads((directory / "queries.json").read_text()).items():
        mem.load_states({STORE: states[name]})
        predictions[name] = read_logits(mem, vocab, keys).argmax(-1).tolist()
    return {"predictions": predictions, "backbone_sha256": backbone_sha256(model)}


def backbone_sha256(model: Any) -> str:
    """sha256 over the backbone's own tensors (δ-mem's parameters and wrappers left out)."""
    digest = hashlib.sha256()
    tensors = {
        name.replace(".base_layer.", "."): tensor
        for name, tensor in model.state_dict().items()
        if ".delta_mem." not in name
    }
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Plan:
    backbone: BackboneOptions
    memory: MemoryOptions
    tests: int
    """Held-out episodes per K."""
    validation: int
    """Validation episodes (early stopping and the headline choice; never in the table)."""


FULL = Plan(BackboneOptions(), MemoryOptions(), tests=120, validation=64)
QUICK = Plan(
    BackboneOptions(max_steps=6, batch=8, eval_every=3, curriculum=1),
    MemoryOptions(steps=6, batch=4, warmup=2, eval_every=6, curriculum=1),
    tests=3,
    validation=5,
)

TARGETS = {
    "b": "≥ 0.95 for K ≤ 8, ≥ 0.80 at K = 16",
    "overwrite": "≥ 0.90",
    "binding": "≥ 0.90",
    "replay": "identical to (b)",
    "control": "within 0.05 of chance",
}


def misses(kind: str, cells: dict[int, Cell]) -> list[int]:
    """The K whose cell misses the row's target."""
    out = []
    for k, cell in cells.items():
        acc = cell.accuracy
        if acc is None:
            continue
        if kind == "b" and acc < (0.95 if k <= 8 else 0.80):
            out.append(k)
        elif kind in ("overwrite", "binding") and acc < 0.90:
            out.append(k)
        elif kind == "control" and abs(acc - cell.chance) > 0.05:
            out.append(k)
    return out


@dataclass(frozen=True)
class Episodes:
    """Every episode the run evaluates on, the same for a seed in every process."""

    backbone_validation: list[Story]
    memory_validation: list[Story]
    tests: dict[int, list[Story]]

    @classmethod
    def for_seed(cls, vocab: Vocab, seed: int, plan: Plan) -> Episodes:
        validation_rng, test_rng = random.Random(f"{seed}/validation"), random.Random(f"{seed}/test")
        backbone_validation = [make_story(vocab, 6, validation_rng) for _ in range(plan.validation)]
        memory_validation = [make_story(vocab, k, validation_rng) for k in KS for _ in range(plan.validation // 4)]
        tests = {k: [make_story(vocab, k, test_rng) for _ in range(plan.tests)] for k in KS}
        return cls(backbone_validation, memory_validation, tests)


def train_variant(name: str, workdir: Path, seed: int, plan: Plan) -> dict[str, Any]:
    """One δ-mem variant, in its own process: load the frozen backbone, attach, train, evaluate."""
    import transformers

    vocab = Vocab()
    episodes = Episodes.for_seed(vocab, seed, plan)
    tests = episodes.tests
    model = transformers.AutoModelForCausalLM.from_pretrained(workdir / "backbone").eval()
    for param in model.parameters():
        param.requires_grad_(False)
    frozen = (workdir / "backbone_sha256").read_text()
    log.info("%s: attaching δ-mem (%s) and training it on episodes", name, VARIANTS[name])
    torch.manual_seed(seed)
    mem = memory.attach(model, VARIANTS[name])
    info = train_memory(mem, vocab, episodes.memory_validation, plan.memory, seed, workdir / f"{name}-adapter")
    info["validation_b"] = accuracy(
        episodes.memory_validation, memory_predictions(mem, vocab, episodes.memory_validation)
    )
    info["parameters"] = sum(p.numel() for p in mem.parameters())
    predictions = {k: memory_predictions(mem, vocab, tests[k]) for k in KS}
    others = {k: tests[k][1:] + tests[k][:1] for k in KS}  # episode i+1's history for episode i's keys
    other_predictions = {k: memory_predictions(mem, vocab, tests[k], written=others[k]) for k in KS}
    mem.reset()
    info["rows"] = {
        "b": {k: score(vocab, tests[k], predictions[k]) for k in KS},
        "overwrite": {k: score(vocab, tests[k], predictions[k], "overwrite") for k in KS},
        "binding": {k: score(vocab, tests[k], predictions[k], "binding") for k in KS},
        "zero": {k: score(vocab, tests[k], read_predictions(mem, vocab, tests[k])) for k in KS},
        "other": {k: score(vocab, tests[k], other_predictions[k]) for k in KS},
    }
    info["other_follows_written"] = {k: follows(tests[k], others[k], other_predictions[k]) for k in KS}
    info["predictions"] = predictions
    info["adapter"] = {n: t.clone() for n, t in mem.adapter_state_dict().items()}
    mem.detach()
    info["backbone_identical"] = backbone_sha256(model) == frozen
    log.info("%s: (b) on held-out %s", name, {k: round(c.accuracy, 3) for k, c in info["rows"]["b"].items()})
    return info


def train_variants(workdir: Path, seed: int, quick: bool, threads: int, jobs: int) -> dict[str, dict[str, Any]]:
    """Every variant in a process of its own (``--train-variant``), ``jobs`` at a time, the
    slowest first; each is deterministic for the seed whatever runs beside it."""
    pending, running, done = sorted(VARIANTS, key=TRAINING_ORDER.index), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                name = pending.pop(0)
                command = [sys.executable, str(Path(__file__).resolve()), "--train-variant", name,
                           "--workdir", str(workdir), "--seed", str(seed), "--threads", str(threads)]
                running[name] = subprocess.Popen([*command, *(["--quick"] if quick else [])])
            finished = next((name for name, process in running.items() if process.poll() is not None), None)
            if finished is None:
                time.sleep(0.5)  # a few child processes, polled; not a test
                continue
            process = running.pop(finished)
            if process.returncode != 0:
                raise SystemExit(f"training {finished} failed (exit code {process.returncode}); see its log above")
            done[finished] = torch.load(workdir / f"{finished}.pt", weights_only=False)
    finally:  # a failure or Ctrl-C stops the other trainings too
        for process in running.values():
            process.kill()
            process.wait()
    return {name: done[name] for name in VARIANTS}


def run(seed: int, plan: Plan, threads: int, jobs: int, quick: bool) -> dict[str, Any]:
    vocab = Vocab()
    episodes = Episodes.for_seed(vocab, seed, plan)
    tests = episodes.tests
    rows: dict[str, dict[int, Cell]] = {}
    extra: dict[str, Any] = {"seed": seed, "threads": threads, "jobs": jobs, "tests_per_k": plan.tests}

    def per_k(predict, only: str = "all", stories: dict[int, list[Story]] = tests) -> dict[int, Cell]:
        return {k: score(vocab, stories[k], predict(stories[k]), only) for k in KS}

    log.info("backbone: training a tiny Qwen3 (%d layers, hidden %d) on next-token loss", LAYERS, HIDDEN)
    model = build_backbone(vocab, seed)
    # The backbone trains alone: it may use every core the variants' processes use later.
    torch.set_num_threads(threads * jobs)
    extra["backbone"] = train_backbone(model, vocab, episodes.backbone_validation, plan.backbone, seed)
    extra["backbone"]["threads"] = threads * jobs
    torch.set_num_threads(threads)
    extra["backbone"]["parameters"] = sum(p.numel() for p in model.parameters())
    frozen = backbone_sha256(model)
    rows["chance"] = per_k(lambda stories: [[-1] * len(s.facts) for s in stories])
    rows["(a) backbone, query alone"] = per_k(lambda s: query_alone_predictions(model, vocab, s))
    c_predictions = {k: in_context_predictions(model, vocab, tests[k]) for k in KS}
    rows["(c) backbone, history in context"] = {k: score(vocab, tests[k], c_predictions[k]) for k in KS}
    rows["(c) re-assigned keys"] = {k: score(vocab, tests[k], c_predictions[k], "overwrite") for k in KS}

    with tempfile.TemporaryDirectory(prefix="recall-") as tmp:
        directory = Path(tmp)
        model.save_pretrained(directory / "backbone")  # the frozen backbone, for every other process
        (directory / "backbone_sha256").write_text(frozen)
        variants = train_variants(directory, seed, quick, threads, jobs)
        for name, info in variants.items():
            if not info["backbone_identical"]:
                raise SystemExit(f"{name}: the backbone changed during δ-mem training")

        headline = max(variants, key=lambda n: variants[n]["validation_b"])  # chosen on validation, not held-out
        log.info("headline: %s (best (b) on the validation episodes); saving it for a fresh process", headline)
        mem = memory.attach(model, VARIANTS[headline])
        mem.load_adapter_state_dict(variants[headline]["adapter"])
        names = save_for_replay(directory, mem, vocab, tests, frozen)
        mem.detach()
        command = [sys.executable, str(Path(__file__).resolve()), "--replay", tmp, "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise SystemExit(f"replay failed ({done.returncode}):\n{done.stderr[-4000:]}")
        replayed = json.loads(done.stdout)
    reloaded = {k: [replayed["predictions"][f"k{k}_{i}"] for i in range(len(tests[k]))] for k in KS}
    identical = {k: reloaded[k] == variants[headline]["predictions"][k] for k in KS}
    rows_b = {name: v["rows"]["b"] for name, v in variants.items()}
    h = variants[headline]["rows"]
    return {
        "vocab": vocab,
        "headline": headline,
        "rows_b": rows_b,
        "rows": rows,
        "headline_rows": {
            "(b-overwrite) re-assigned keys": h["overwrite"],
            "binding-only": h["binding"],
            "(b′) reloaded in a fresh process": {k: score(vocab, tests[k], reloaded[k]) for k in KS},
            "control: zero state": h["zero"],
            "control: another episode's state": h["other"],
        },
        "replay": {
            "identical": identical, "backbone_identical": replayed["backbone_sha256"] == frozen, "queries": len(names)
        },
        "variants": variants,
        "extra": extra,
    }


@torch.no_grad()
def read_predictions(mem: memory.Memory, vocab: Vocab, stories: Sequence[Story]) -> list[list[int]]:
    """The zero-state control: a read-only pass with every store zero."""
    mem.reset()
    return [read_logits(mem, vocab, [key for key, _ in s.facts]).argmax(-1).tolist() for s in stories]


def render(result: dict[str, Any]) -> str:
    """The markdown table: accuracy per K, the row's chance, its target and whether it is met."""
    head = "| row | " + " | ".join(f"K={k}" for k in KS) + " | chance | target | |"
    lines = [head, "|" + "---|" * (len(KS) + 4)]

    def line(label: str, cells: dict[int, Cell], kind: str | None, note: str = "") -> None:
        values = [f"{c.accuracy:.3f}" if c.accuracy is not None else "—" for c in cells.values()]
        total = Cell(sum(c.correct for c in cells.values()), sum(c.total for c in cells.values()),
                     sum(c.chance_sum for c in cells.values()))
        missed = misses(kind, cells) if kind else []
        verdict = "" if kind is None else (note or "ok") if not missed else "MISS at K=" + ",".join(map(str, missed))
        chance = f"{total.chance:.3f}" if total.chance is not None else "—"
        lines.append(f"| {label} | " + " | ".join(values) + f" | {chance} | {TARGETS.get(kind, '')} | {verdict} |")

    rows, headline = result["rows"], result["headline"]
    lines.append("| chance (1 / values of the queried key's family) | "
                 + " | ".join(f"{c.chance:.3f}" for c in rows["chance"].values()) + " | | | |")
    line("(a) backbone, query alone", rows["(a) backbone, query alone"], None)
    line("(c) backbone, history in context", rows["(c) backbone, history in context"], None)
    line("(c) re-assigned keys", rows["(c) re-assigned keys"], None)
    for name, cells in result["rows_b"].items():
        mark = " (headline)" if name == headline else ""
        line(f"(b) δ-mem {name}{mark}, history only in memory", cells, "b")
    hr = result["headline_rows"]
    line(f"(b-overwrite) {headline}, re-assigned keys", hr["(b-overwrite) re-assigned keys"], "overwrite")
    line(f"binding-only {headline}", hr["binding-only"], "binding")
    identical = all(result["replay"]["identical"].values())
    line(f"(b′) {headline} reloaded in a fresh process", hr["(b′) reloaded in a fresh process"], None)
    lines[-1] = lines[-1].rsplit("|", 3)[0] + f"| {TARGETS['replay']} | " + (
        "ok: predictions identical |" if identical else "MISS: predictions differ |")
    line(f"control: zero state ({headline})", hr["control: zero state"], "control")
    line(f"control: another episode's state ({headline})", hr["control: another episode's state"], "control")
    return "\n".join(lines)


def summary_lines(result: dict[str, Any], seconds: float) -> list[str]:
    backbone, variants = result["extra"]["backbone"], result["variants"]
    out = [
        f"backbone: tiny Qwen3, {LAYERS} layers, hidden {HIDDEN}, {backbone['parameters']:,} parameters; "
        f"trained {backbone['steps']} steps ({backbone['seconds']:.0f} s) to (c) = {backbone['validation_c_k6']:.3f} "
        "at K = 6 on validation episodes, then frozen",
    ]
    for name, info in variants.items():
        follows_written = ", ".join(
            f"K={k}: {v:.2f}" for k, v in info["other_follows_written"].items() if v is not None
        )
        out.append(
            f"{name}: {info['parameters']:,} δ-mem parameters, {info['episodes']:,} episodes in {info['steps']} "
            f"steps ({info['seconds']:.0f} s), "
            f"(b) on validation {info['validation_b']:.3f}; backbone bit-identical afterwards: "
            f"{'yes' if info['backbone_identical'] else 'NO'}; other-episode answers that are the written "
            f"episode's value for the key: {follows_written}"
        )
    replay = result["replay"]
    out.append(
        f"(b′): {replay['queries']} written states saved with WorkspaceStore.save_states, adapter with save_adapter, "
        f"backbone with save_pretrained; fresh process: predictions identical: "
        f"{'yes' if all(replay['identical'].values()) else 'NO'}, backbone sha256 identical: "
        f"{'yes' if replay['backbone_identical'] else 'NO'}"
    )
    out.append(f"seed {result['extra']['seed']}, {result['extra']['jobs']} variants at once with "
               f"{result['extra']['threads']} torch thread(s) each, "
               f"{result['extra']['tests_per_k']} held-out episodes per K; wall time {seconds:.0f} s")
    return out


def to_json(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    def cells(row: dict[int, Cell]) -> dict[str, Any]:
        return {str(k): c.to_dict() for k, c in row.items()}

    return {
        "headline": result["headline"],
        "rows": {name: cells(row) for name, row in result["rows"].items()},
        "b": {name: cells(row) for name, row in result["rows_b"].items()},
        "headline_rows": {name: cells(row) for name, row in result["headline_rows"].items()},
        "variants": {
            name: {
                "validation_b": info["validation_b"],
                "steps": info["steps"],
                "episodes": info["episodes"],
                "seconds": info["seconds"],
                "curve": info["curve"],
                "parameters": info["parameters"],
                "backbone_identical": info["backbone_identical"],
                "rows": {kind: cells(row) for kind, row in info["rows"].items()},
                "other_follows_written": {str(k): v for k, v in info["other_follows_written"].items()},
            }
            for name, info in result["variants"].items()
        },
        "replay": {**result["replay"], "identical": {str(k): v for k, v in result["replay"]["identical"].items()}},
        "backbone": result["extra"]["backbone"],
        "seed": result["extra"]["seed"],
        "threads": result["extra"]["threads"],
        "jobs": result["extra"]["jobs"],
        "tests_per_k": result["extra"]["tests_per_k"],
        "wall_seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads per process (default 1: when another process holds a core, 2 threads run "
        "10-40x slower; 1 thread never does). The backbone, trained before any variant, uses threads x jobs",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute; its numbers mean nothing")
    parser.add_argument("--out", type=Path, help="also write the table as recall.md and everything as recall.json here")
    parser.add_argument(
        "--jobs", type=int, default=max(1, min(len(VARIANTS), (os.cpu_count() or 1))),
        help="variants trained at once, one process each (default: one per CPU core, at most 3)",
    )
    parser.add_argument("--replay", type=Path, help=argparse.SUPPRESS)  # the fresh process of (b′)
    parser.add_argument("--train-variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # one variant's process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if args.replay is not None:
        print(json.dumps(replay(args.replay)))
        return
    plan = QUICK if args.quick else FULL
    if args.train_variant is not None:
        info = train_variant(args.train_variant, args.workdir, args.seed, plan)
        torch.save(info, args.workdir / f"{args.train_variant}.pt")
        return
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    start = time.perf_counter()
    result = run(args.seed, plan, args.threads, args.jobs, args.quick)
    seconds = time.perf_counter() - start
    table = render(result)
    notes = summary_lines(result, seconds)
    print(table)
    print()
    print("\n".join(notes))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "recall.md").write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        (args.out / "recall.json").write_text(json.dumps(to_json(result, seconds), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
