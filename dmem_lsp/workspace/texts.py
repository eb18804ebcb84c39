"""The text written into memory: how each source is framed, and how a text is cut into write passes.

One module, used by the server (``sources.py``) and by training (``workspace_episodes.py``,
benchmarks), so that an adapter learns from exactly what the server writes:

- a convention file: ``Project file {path}:\\n{text}``, at most ``convention_file_tokens``
  of it and what is left of the pass's ``convention_tokens`` budget, files found at most
  ``CONVENTION_DEPTH`` folders down, shallow ones first;
- an edit: ``Edit to {path}:\\n{unified diff}`` with ``DIFF_CONTEXT`` lines of context;
- an accepted completion: ``Accepted completion in {path}:\\n{text}``;
- a debugging step: ``Debugging step ({kind}) in {path}:\\n{text}`` (without `` in {path}``
  when the editor names no file); an explanation asked about an error is a step whose text
  is ``explanation_step``.

A written text is tokenized without special tokens (``write_ids``), cut to its limit, then
into passes of at most ``memory.writeChunkTokens`` tokens (``chunks``): each pass is one
forward of the model, and for a segment-write (SSW) adapter one segment. Pure functions of
text and a tokenizer; nothing here knows the server or torch.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

__all__ = [
    "CONVENTION_DEPTH",
    "DIFF_CONTEXT",
    "accepted_completion",
    "chunks",
    "convention",
    "convention_limit",
    "convention_order",
    "debug_step",
    "diff",
    "edit",
    "explanation_step",
    "write_ids",
    "write_passes",
]

CONVENTION_DEPTH = 3
"""Folder levels below the root searched for convention files."""
DIFF_CONTEXT = 2
"""Unchanged lines around each change in an edit's diff."""


def convention(path: str, text: str) -> str:
    """A convention file as written into ``conventions``."""
    return f"Project file {path}:\n{text}"


def convention_order(path: str) -> tuple[int, str]:
    """Sort key of convention files (relative POSIX paths): shallow ones first, then by path."""
    return len(PurePosixPath(path).parts), path


def convention_limit(file_tokens: int, budget: int | None) -> int | None:
    """The most tokens of one convention file written: ``file_tokens``, and no more than
    the ``budget`` left in this pass (None: no budget). 0: the budget is spent, skip it."""
    return file_tokens if budget is None else max(0, min(file_tokens, budget))


def diff(path: str, old: str, new: str) -> str:
    """The unified diff from ``old`` to ``new`` (both named ``path``), as an edit carries it."""
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), path, path, n=DIFF_CONTEXT))


def edit(path: str, unified_diff: str) -> str:
    """An edit (``diff``'s output, after the write policy) as written into ``edits``."""
    return f"Edit to {path}:\n{unified_diff}"


def accepted_completion(path: str, text: str) -> str:
    """An accepted completion as written into ``edits``."""
    return f"Accepted completion in {path}:\n{text}"


def debug_step(kind: str, text: str, path: str | None = None) -> str:
    """A debugging step as written into ``debug``; ``path``: the file it was taken from."""
    where = f" in {path}" if path else ""
    return f"Debugging step ({kind}){where}:\n{text}"


def explanation_step(code: str, explanation: str) -> str:
    """The text of the debugging step an explanation asked about an error becomes."""
    return f"{code.strip()}\n\nExplanation:\n{explanation}"


def write_ids(tokenizer: Any, text: str, limit: int | None = None) -> list[int]:
    """The token ids a write of ``text`` takes (its first ``limit``)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids if limit is None else ids[:limit]


def chunks(ids: Sequence[int], chunk_tokens: int) -> list[list[int]]:
    """``ids`` cut into the write passes the server runs: ``chunk_tokens`` each, the last shorter."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens!r}: must be a positive integer")
    return [list(ids[start : start + chunk_tokens]) for start in range(0, len(ids), chunk_tokens)]


def write_passes(tokenizer: Any, text: str, chunk_tokens: int, limit: int | None = None) -> list[tuple[int, ...]]:
    """Every write pass (token ids) that writing ``text`` runs, in order: one segment each under SSW.

    Training histories are lists of these, so an episode's pieces are the server's passes."""
    return [tuple(piece) for piece in chunks(write_ids(tokenizer, text, limit), chunk_tokens)]
