"""Training episodes: what is written into memory, what is asked, and what must come out.

δ-mem is trained as the paper trains it: an episode's *history* is written into a zeroed
state (a write pass), then the *query* and *target* are read with the history absent from
the prompt (a read-only pass), and the loss is the cross-entropy on the target tokens only.

This module turns chat conversations into episodes (JSONL, one ``{"messages": [...]}`` per
line) and splits held-out episodes off deterministically. It needs only a tokenizer with a
chat template; workspace episodes built from a git history live in ``dmem_lsp``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["Episode", "EpisodeError", "conversation_episode", "read_conversations", "split_episodes", "fingerprint"]


class EpisodeError(ValueError):
    """Training data that cannot be turned into episodes, with where and why."""


@dataclass(frozen=True)
class Episode:
    """One training example. Token ids, not text: the tokenizer has been applied already."""

    history: tuple[tuple[int, ...], ...]
    """The pieces written into memory, in order (a message, a file, a diff): one segment each
    for segment writes (SSW); token writes (TSW) write their concatenation."""
    query: tuple[int, ...]
    """The prompt of the read-only pass."""
    target: tuple[int, ...]
    """What the model must produce after the query; the loss is on these tokens only."""
    source: str = ""
    """Where the episode came from, for messages (``data.jsonl:12``, ``a1b2c3d src/app.py``)."""
    reads: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    """More (query, target) pairs read from the same written history, each a read pass of
    its own; the loss is the mean over every target token of the episode."""
    stores: tuple[str, ...] = ()
    """The memory store each history piece is written into, one name per piece (as the server
    writes conventions, edits and debug steps into stores of their own); empty: every piece
    into the memory's first store."""

    def __post_init__(self) -> None:
        if not any(self.history):
            raise EpisodeError(f"{self.source or 'an episode'}: the history is empty, so there is nothing to remember")
        if not self.query:
            raise EpisodeError(f"{self.source or 'an episode'}: the query is empty")
        if not self.target:
            raise EpisodeError(f"{self.source or 'an episode'}: the target is empty")
        if any(not query or not target for query, target in self.reads):
            raise EpisodeError(f"{self.source or 'an episode'}: a read has an empty query or target")
        if self.stores and len(self.stores) != len(self.history):
            raise EpisodeError(
                f"{self.source or 'an episode'}: {len(self.stores)} store names for {len(self.history)} history pieces"
            )

    @property
    def queries(self) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
        """Every (query, target) read from the history: the first one, then ``reads``."""
        return ((self.query, self.target), *self.reads)

    @property
    def history_tokens(self) -> int:
        return sum(len(piece) for piece in self.history)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _encode(tokenizer: Any, text: str) -> tuple[int, ...]:
    return tuple(tokenizer.encode(text, add_special_tokens=False))


def conversation_episode(tokenizer: Any, messages: Sequence[dict[str, str]], source: str = "") -> Episode:
    """An episode from one conversation.

    The conversation must end with a user turn and the assistant's answer. The history is
    every turn before that exchange (system messages excepted), rendered with the chat
    template, one piece per message; the query is the last user turn (after any leading
    system messages) with the template's generation prompt; the target is the answer as the
    template renders it (its end-of-turn marker included, so the model learns to stop).
    """
    where = source or "a conversation"
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise EpisodeError(f"{where}: messages must be a list of {{'role': str, 'content': str}} objects")
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    system = []
    while messages and messages[0]["role"] == "system":
        system.append(messages.pop(0))
    if len(messages) < 3 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
        raise EpisodeError(
            f"{where}: needs at least one turn of history, then a user turn and the assistant's answer as the last two"
        )
    history, question, answer = messages[:-2], messages[-2], messages[-1]

    pieces, rendered = [], ""
    for count in range(1, len(history) + 1):
        text = _render(tokenizer, history[:count])
        if not text.startswith(rendered):  # a template that rewrites earlier turns: one piece
            pieces = [_render(tokenizer, history)]
            break
        pieces.append(text[len(rendered):])
        rendered = text
    prompt = _render(tokenizer, [*system, question], generation_prompt=True)
    full = _render(tokenizer, [*system, question, answer])
    if full.startswith(prompt) and full[len(prompt):].strip():
        target = _encode(tokenizer, full[len(prompt):])
    else:  # the template does not extend its prompt: the answer and end-of-sequence
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        target = (*_encode(tokenizer, answer["content"]), *eos)
    return Episode(
        history=tuple(_encode(tokenizer, piece) for piece in pieces if piece),
        query=_encode(tokenizer, prompt),
        target=target,
        source=source,
    )


def read_conversations(path: str | os.PathLike, tokenizer: Any) -> list[Episode]:
    """Every line of a JSONL file as an episode; a bad line is refused with its number."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise EpisodeError(f"cannot read {path}: {error}") from error
    episodes = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            record = json.loads(line)
        except ValueError as error:
            raise EpisodeError(f"{where}: not JSON ({error})") from error
        if not isinstance(record, dict) or "messages" not in record:
            raise EpisodeError(f'{where}: expected an object {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
        episodes.append(conversation_episode(tokenizer, record["messages"], where))
    if not episodes:
        raise EpisodeError(f"{path} holds no conversations")
    return episodes


def split_episodes(
    episodes: Sequence[Episode], eval_fraction: float, seed: int
) -> tuple[list[Episode], list[Episode]]:
    """(train, held out): a seeded shuffle, then ``round(n · eval_fraction)`` episodes held out.

    At least one episode is held out when the fraction is positive and there are two or
    more; at least one is always left to train on.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction={eval_fraction!r}: must be at least 0 and below 1")
    if not episodes:
        raise EpisodeError("no episodes to train on")
    order = torch.randperm(len(episodes), generator=torch.Generator().manual_seed(seed)).tolist()
    held = round(len(episodes) * eval_fraction)
    if eval_fraction > 0 and len(episodes) >= 2:
        held = max(1, held)
    held = min(held, len(episodes) - 1)
    return [episodes[i] for i in order[held:]], [episodes[i] for i in order[:held]]


def fingerprint(episodes: Sequence[Episode]) -> str:
    """sha256 over every episode's tokens, in order: resuming on other data is refused by it."""
    digest = hashlib.sha256()
    for episode in episodes:
        fields: list[Any] = [episode.history, episode.query, episode.target]
        fields += [episode.reads] if episode.reads or episode.stores else []
        fields += [episode.stores] if episode.stores else []
        digest.update(json.dumps(fields).encode())
    return digest.hexdigest()
