"""The served recall task: facts in a workspace's files, asked at a cursor in a document.

A workspace holds K facts (``key = value``) among distractor lines, in one of three
sources, each written by the server into its own store:

- ``conventions``: a README.md that the server writes when the folder opens;
- ``edits``: a document whose change (``didChange``) adds the fact lines, written as a diff;
- ``debug``: debugging steps sent with ``dmem.rememberDebugStep``, one fact or note each.

Half the convention and debug histories re-assign a key later on: the latest value is the
answer. A query is a small document (``src/q<i>.py``): a few lines of code, the line
``<key> =`` with the cursor at its end, maybe more lines after it. The answer is the value,
one token of the task's tokenizer (a byte-level BPE trained on the task's own text, saved
with FIM tokens and a ChatML template, so both of the server's prompt shapes apply).

Keys of a family draw their values from the family's one value set, so knowing which
values appeared says nothing about which key holds which. Everything is a function of a
``random.Random``: the same seed lays out the same workspaces.

The text the server writes for each source is built by ``framed`` (the seam where
``dmem_lsp/workspace/texts.py`` lands, contract 2); ``workspace_recall.py`` checks it against the
token counts the real server reports for every write.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "number": (("indent", "tabwidth", "maxargs", "maxdepth", "retries", "workers"),
               ("1", "2", "3", "4", "5", "6", "7", "8")),
    "naming": (("fnstyle", "classstyle", "conststyle", "filestyle", "varstyle", "modstyle"),
               ("snake", "camel", "pascal", "kebab", "upper", "flat")),
    "path": (("testsdir", "docsdir", "srcdir", "builddir", "scriptsdir", "fixturesdir"),
             ("qa", "tests", "spec", "src", "lib", "docs", "build", "tools")),
    "tool": (("formatter", "linter", "checker", "runner", "sorter", "docbuilder"),
             ("black", "ruff", "mypy", "pytest", "isort", "sphinx")),
}
KEYS = tuple(key for keys, _ in FAMILIES.values() for key in keys)
FAMILY_OF = {key: family for family, (keys, _) in FAMILIES.items() for key in keys}
SOURCES = ("conventions", "edits", "debug")
IDENTIFIERS = ("x", "y", "n", "data", "items", "result", "path", "config", "name", "total")
WORDS = ("fix", "later", "the", "parser", "cache", "bug", "see", "run", "note", "slow", "why", "again")
NOTES_FILE = "notes.txt"
EDITED_FILE = "settings.txt"
VOCAB_SIZE = 640


def values_of(key: str) -> tuple[str, ...]:
    return FAMILIES[FAMILY_OF[key]][1]


def chance(key: str) -> float:
    return 1.0 / len(values_of(key))


# ----------------------------------------------------------------------------- text lines


def fact_line(key: str, value: str, rng: random.Random) -> str:
    """The key starts its line in every form, so it is the same token wherever it is named."""
    return rng.choice((f"{key} = {value}", f"{key}: {value}", f"{key} is {value}"))


def code_line(rng: random.Random) -> str:
    """Code that names no key: what query documents and edited files hold around the facts."""
    ident, number = rng.choice(IDENTIFIERS), rng.choice(FAMILIES["number"][1])
    value = rng.choice(rng.choice(list(FAMILIES.values()))[1])
    return rng.choice((
        f"def {ident}({rng.choice(IDENTIFIERS)}):", f"    return {ident} + {number}", f"{ident} = {number}",
        f"{ident} = {value}", f"for {ident} in range({number}):", f"print({ident})",
        f"import {rng.choice(FAMILIES['tool'][1])}", "# " + " ".join(rng.sample(WORDS, 3)),
    ))


def distractor_line(rng: random.Random) -> str:
    """Prose and code around the facts; keys and values occur, never as a fact."""
    key = rng.choice(KEYS)
    value = rng.choice(rng.choice(list(FAMILIES.values()))[1])
    return rng.choice((
        code_line(rng), f"# TODO {rng.choice(WORDS)} {key}", f"see {value} for {rng.choice(WORDS)}",
        f"the {key} is checked by ci", "## " + " ".join(rng.sample(WORDS, 2)),
    ))


# ----------------------------------------------------------------------------- workspaces


@dataclass(frozen=True)
class Query:
    key: str
    value: str
    path: str
    """The query document, relative to the workspace root."""
    prefix: str
    suffix: str
    """The document is prefix + suffix; the cursor sits between them, at the end of ``<key> =``."""

    @property
    def text(self) -> str:
        return self.prefix + self.suffix


@dataclass(frozen=True)
class Workspace:
    """One workspace: where its facts live, the files and events that carry them, what is asked."""

    source: str
    facts: tuple[tuple[str, str], ...]
    """(key, latest value), in query order."""
    reassigned: frozenset[str]
    files: dict[str, str]
    """Files on disk (relative path -> text) when the server opens the folder."""
    edit: tuple[str, str] | None = None
    """``edits``: (the edited file's text when opened, its text after the change)."""
    steps: tuple[str, ...] = ()
    """``debug``: the steps' texts, in order."""
    queries: tuple[Query, ...] = field(default=())


def make_query(key: str, value: str, index: int, rng: random.Random) -> Query:
    before = [code_line(rng) for _ in range(rng.randint(0, 3))]
    after = [code_line(rng) for _ in range(rng.randint(0, 3))]
    prefix = "".join(line + "\n" for line in before) + f"{key} ="
    suffix = "".join("\n" + line for line in after) + "\n"
    return Query(key, value, f"src/q{index}.py", prefix, suffix)


def make_workspace(source: str, k: int, rng: random.Random, reassign: float = 0.5,
                   keys: Sequence[str] | None = None, few_families: bool = False) -> Workspace:
    """K facts among distractors, carried by ``source``. ``keys``: these keys (another workspace's)
    with values drawn afresh. ``few_families``: the keys come from as few families as hold K
    (or one more), so most keys share their value set with another key of the history: a
    backbone learns the lookup by key sooner from these (benchmarks/recall.py saw the same)."""
    pool = KEYS
    if few_families and keys is None:
        needed = -(-k // min(len(f[0]) for f in FAMILIES.values()))
        chosen = rng.sample(list(FAMILIES), min(len(FAMILIES), needed + rng.randint(0, 1)))
        pool = tuple(key for key in KEYS if FAMILY_OF[key] in chosen)
    keys = list(keys) if keys is not None else rng.sample(pool, k)
    final = {key: rng.choice(values_of(key)) for key in keys}
    again = rng.sample(keys, rng.randint(1, max(1, k // 4))) if source != "edits" and rng.random() < reassign else []
    events = [*keys, *again]
    rng.shuffle(events)
    pending = {key: events.count(key) for key in again}
    lines = []
    for key in events:
        if pending.get(key, 0) > 1:
            pending[key] -= 1
            lines.append(fact_line(key, rng.choice([v for v in values_of(key) if v != final[key]]), rng))
        else:
            lines.append(fact_line(key, final[key], rng))
    for _ in range(rng.randint(1, 2 + k // 2)):
        lines.insert(rng.randint(0, len(lines)), distractor_line(rng))
    order = list(keys)
    rng.shuffle(order)
    queries = tuple(make_query(key, final[key], i, rng) for i, key in enumerate(order))
    facts = tuple((key, final[key]) for key in order)
    files = {q.path: q.text for q in queries}
    edit, steps = None, ()
    if source == "conventions":
        files["README.md"] = "# " + " ".join(rng.sample(WORDS, 2)) + "\n\n" + "".join(line + "\n" for line in lines)
    elif source == "edits":
        old = [code_line(rng) for _ in range(rng.randint(2, 5))]
        new = list(old)
        for line in lines:
            new.insert(rng.randint(0, len(new)), line)
        edit = ("".join(line + "\n" for line in old), "".join(line + "\n" for line in new))
        files[EDITED_FILE] = edit[0]
    else:
        steps = tuple(lines)
    return Workspace(source, facts, frozenset(again), files, edit, steps, queries)


def binding(workspace: Workspace) -> set[str]:
    """Keys whose family has another key in this workspace holding another value: the queries
    that knowing which values appeared cannot answer, only the lookup by key (``recall.py``'s
    binding row). A backbone that copies "a value of the key's family" scores chance on them."""
    return {
        key for key, value in workspace.facts
        if any(FAMILY_OF[k] == FAMILY_OF[key] and v != value for k, v in workspace.facts if k != key)
    }


def lay_out(workspace: Workspace, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for relative, text in workspace.files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


# ----------------------------------------------------------------------------- what the server writes


def framed(workspace: Workspace) -> list[str]:
    """The texts the server writes for this workspace's facts, one per write event, in order.

    Built with ``dmem_lsp.workspace.texts``, the framing the server writes with (``learn_convention``,
    ``flush_edit``, ``debug_step``); ``workspace_recall.py`` also checks every one against the
    token count the real server reports for its write, so a drift fails the benchmark loudly.
    """
    from dmem_lsp.workspace import texts

    if workspace.source == "conventions":
        return [texts.convention("README.md", workspace.files["README.md"])]
    if workspace.source == "edits":
        old, new = workspace.edit
        return [texts.edit(EDITED_FILE, texts.diff(EDITED_FILE, old, new))]
    return [texts.debug_step("note", step, NOTES_FILE) for step in workspace.steps]


# ----------------------------------------------------------------------------- the tokenizer


def corpus(rng: random.Random, n: int = 600) -> list[str]:
    texts = []
    for i in range(n):
        ws = make_workspace(SOURCES[i % 3], rng.randint(1, 16), rng)
        texts += framed(ws) + [q.text for q in ws.queries[:2]]
    instruction = "Complete the code at <CURSOR>. Reply with only the text to insert there.\n\n"
    return texts + [instruction] * 50


def save_tokenizer(directory: Path, fim: bool, seed: int = 0) -> Any:
    """The task's byte-level BPE (any text round-trips), ChatML template; FIM tokens when ``fim``.

    Both variants have the same ids: the chat one is the FIM one with the three FIM tokens
    renamed (``NO_FIM_TOKENS``), so one backbone serves either prompt shape. Built by the
    demo's builder (``dmem_lsp.cli.tiny_tokenizer``), over every byte.
    """
    from dmem_lsp.cli.tiny_tokenizer import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(corpus(random.Random(seed)), VOCAB_SIZE, fim=fim, every_byte=True)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer
