"""Training episodes from a git repository's history (``dmem-lsp adapter train --workspace``).

An episode teaches what the server does at run time: remember the project, then complete
code with the project absent from the prompt. For every later commit that changes a text
file, and for each changed place in it (up to ``max_per_commit``):

- history: the convention files as of the commit's parent (``policy.is_convention_file``,
  within the server's per-file and per-pass token budgets), then the diffs of the
  ``history_commits`` commits before it, framed by ``texts`` as the server frames them
  (``Project file <path>:``, ``Edit to <path>:`` with a unified diff), one history piece
  per write pass the server runs (``texts.write_passes``: one segment each under SSW),
  each into the store the server writes it into (``conventions``, ``edits``);
- query: the completion prompt the server would build at that place in the file *before*
  the change (``prompts.completion_prompt`` in ``options.prompt``'s shape: FIM or chat,
  with the server's prefix/suffix budgets), so the cursor sits inside the file;
- target: the lines the commit put there, then end-of-sequence.

Every file passes the server's write policy first: ignored files (``.gitignore``,
``.dmemignore``), secrets files, binaries and oversized files never enter an episode, and
secrets inside a file are redacted as the server redacts them (a file that is mostly
secret is left out). Git runs as a subprocess (``git log``, ``git show``, ``git ls-tree``).
"""

from __future__ import annotations

import difflib
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dmem_lsp.runtime.prompts import SHAPES, completion_prompt
from dmem_lsp.runtime.settings import CompletionSettings, MemorySettings
from dmem_lsp.workspace import texts
from dmem_lsp.workspace.policy import IGNORED_DIRECTORIES, Policy, is_convention_file
from memory.episodes import Episode, EpisodeError

__all__ = ["WorkspaceOptions", "workspace_episodes"]

CONVENTION_DEPTH = texts.CONVENTION_DEPTH
"""Folder levels below the root searched for convention files (as the server does)."""


@dataclass(frozen=True)
class WorkspaceOptions:
    max_commits: int = 200
    """The most recent commits (first-parent) that are read."""
    history_commits: int = 8
    """Diffs of this many earlier commits go into an episode's history."""
    max_per_commit: int = 8
    """Episodes (changed places) taken from one commit at most."""
    max_target_lines: int = 16
    """Lines of a change used as its target at most."""
    max_file_bytes: int = MemorySettings().max_file_bytes
    """Files over this size are left out, as the server leaves them out."""
    prefix_tokens: int = CompletionSettings().prefix_tokens
    suffix_tokens: int = CompletionSettings().suffix_tokens
    prompt: str | None = None
    """The query's shape, "fim" or "chat" (None: FIM when the tokenizer has the FIM tokens,
    as the server decides for an adapter that records none)."""
    write_chunk_tokens: int = MemorySettings().write_chunk_tokens
    """Tokens per write pass, as ``memory.writeChunkTokens``: each pass is one history piece."""
    convention_tokens: int = MemorySettings().convention_tokens
    """Convention tokens written when a folder opens, as ``memory.conventionTokens``."""
    convention_file_tokens: int = MemorySettings().convention_file_tokens
    """Tokens of one convention file at most, as ``memory.conventionFileTokens``."""

    def __post_init__(self) -> None:
        for name in (
            "max_commits", "history_commits", "max_per_commit", "max_target_lines", "max_file_bytes",
            "write_chunk_tokens", "convention_file_tokens",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"WorkspaceOptions.{name}={getattr(self, name)!r}: must be a positive integer")
        if not isinstance(self.convention_tokens, int) or self.convention_tokens < 0:
            raise ValueError(f"WorkspaceOptions.convention_tokens={self.convention_tokens!r}: must not be negative")
        if self.prompt is not None and self.prompt not in SHAPES:
            raise ValueError(f"WorkspaceOptions.prompt={self.prompt!r}: must be one of {', '.join(SHAPES)} or None")


@dataclass(frozen=True)
class _Change:
    path: str
    old: str | None
    new: str | None

    @property
    def diff(self) -> str:
        return texts.diff(self.path, self.old or "", self.new or "")


class _Repository:
    """Reads one repository through git, passing every file through the write policy."""

    def __init__(self, path: Path, max_file_bytes: int) -> None:
        self.root = Path(self._git(Path(path), "rev-parse", "--show-toplevel").decode().strip()).resolve()
        self.policy = Policy(self.root, max_file_bytes)
        self._blobs: dict[tuple[str, str], str | None] = {}
        self._trees: dict[str, dict[str, str]] = {}

    @staticmethod
    def _git(where: Path, *args: str) -> bytes:
        try:
            result = subprocess.run(
                ["git", "-C", str(where), "-c", "core.quotepath=off", *args],
                capture_output=True, check=False, timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise EpisodeError(f"cannot run git in {where}: {error}") from error
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip().splitlines()
            raise EpisodeError(f"git {args[0]} failed in {where}: {message[-1] if message else result.returncode}")
        return result.stdout

    def git(self, *args: str) -> bytes:
        return self._git(self.root, *args)

    def commits(self, limit: int) -> list[str]:
        """The last ``limit`` first-parent commits of HEAD, oldest first."""
        return self.git("log", "--first-parent", "--format=%H", "-n", str(limit)).decode().split()[::-1]

    def allowed(self, path: str) -> bool:
        return self.policy.check_path(self.root / path) is None

    def text(self, blob: str, path: str) -> str | None:
        """A blob's text with its secrets redacted, or None when the policy refuses it (binary, too big,
        mostly secret)."""
        if (blob, path) not in self._blobs:
            text, refusal = self.policy.check_text_bytes(self.git("cat-file", "blob", blob), path)
            self._blobs[(blob, path)] = text if refusal is None else None
        return self._blobs[(blob, path)]

    def tree(self, commit: str) -> dict[str, str]:
        """{path: blob} of every file in ``commit``."""
        if commit in self._trees:
            return self._trees[commit]
        while len(self._trees) >= 3:  # commits are read in order: keep the last few trees only
            self._trees.pop(next(iter(self._trees)))
        entries = self._trees[commit] = {}
        for entry in self.git("ls-tree", "-r", "-z", commit).split(b"\0"):
            if entry:
                meta, path = entry.decode(errors="replace").split("\t", 1)
                if meta.split()[1] == "blob":
                    entries[path] = meta.split()[2]
        return entries

    def changes(self, commit: str, parent: str | None) -> list[_Change]:
        """The text files ``commit`` changed that the policy allows, old and new."""
        names = self.git("diff-tree", "-r", "-z", "--no-commit-id", "--name-only", "--root", commit).split(b"\0")
        before = self.tree(parent) if parent else {}
        after = self.tree(commit)
        changes = []
        for path in (name.decode(errors="replace") for name in names if name):
            if not self.allowed(path):
                continue
            old = self.text(before[path], path) if path in before else None
            new = self.text(after[path], path) if path in after else None
            if (path in before and old is None) or (path in after and new is None):
                continue  # one side is refused: the file stays out of every episode
            changes.append(_Change(path, old, new))
        return changes

    def conventions(self, commit: str) -> list[tuple[str, str]]:
        """(path, text) of the convention files in ``commit``, shallow ones first."""
        found = []
        for path, blob in self.tree(commit).items():
            relative = PurePosixPath(path)
            if (
                len(relative.parts) <= CONVENTION_DEPTH + 1
                and not IGNORED_DIRECTORIES.intersection(relative.parts[:-1])
                and is_convention_file(relative)
                and self.allowed(path)
            ):
                text = self.text(blob, path)
                if text is not None:
                    found.append((path, text))
        return sorted(found, key=lambda item: texts.convention_order(item[0]))


def _places(old: str, new: str, limit: int) -> list[tuple[str, str, str]]:
    """(text before, text after, new lines) for every place where ``new`` adds or replaces lines."""
    a, b = old.splitlines(True), new.splitlines(True)
    places = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag in ("replace", "insert") and "".join(b[j1:j2]).strip():
            places.append(("".join(a[:i1]), "".join(a[i2:]), "".join(b[j1 : j1 + limit])))
    return places


def _conventions(tokenizer: Any, found: list[tuple[str, str]], options: WorkspaceOptions) -> list[tuple[int, ...]]:
    """The write passes of the convention files when a folder opens, within the server's budgets."""
    passes: list[tuple[int, ...]] = []
    budget = options.convention_tokens
    for path, text in found:
        limit = texts.convention_limit(options.convention_file_tokens, budget)
        if not limit:
            break  # the server skips every file after the budget is spent
        pieces = texts.write_passes(tokenizer, texts.convention(path, text), options.write_chunk_tokens, limit)
        budget -= sum(len(piece) for piece in pieces)
        passes.extend(pieces)
    return passes


def workspace_episodes(repo: str | Path, tokenizer: Any, options: WorkspaceOptions | None = None) -> list[Episode]:
    """Episodes from the history of the git repository holding ``repo``."""
    options = options or WorkspaceOptions()
    repository = _Repository(Path(repo), options.max_file_bytes)
    commits = repository.commits(options.max_commits)
    if len(commits) < 2:
        raise EpisodeError(f"{repository.root} has {len(commits)} commit(s); episodes need at least two")

    def encode(text: str) -> tuple[int, ...]:
        return tuple(tokenizer.encode(text, add_special_tokens=False))

    eos = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    diffs: list[list[tuple[int, ...]]] = []  # per commit: the write passes of its diffs
    episodes: list[Episode] = []
    for index, commit in enumerate(commits):
        parent = commits[index - 1] if index else None
        changes = repository.changes(commit, parent)
        if parent is not None:
            history = _conventions(tokenizer, repository.conventions(parent), options)
            stores = ["conventions"] * len(history)  # each piece into the store the server writes it into
            for pieces in diffs[-options.history_commits:]:
                history.extend(pieces)
                stores.extend(["edits"] * len(pieces))
            taken = 0
            for change in changes:
                if change.old is None or change.new is None or taken >= options.max_per_commit or not history:
                    continue
                for before, after, lines in _places(change.old, change.new, options.max_target_lines):
                    if taken >= options.max_per_commit:
                        break
                    prompt = completion_prompt(
                        tokenizer, before, after, options.prefix_tokens, options.suffix_tokens, options.prompt
                    )
                    episodes.append(
                        Episode(
                            history=tuple(history),
                            stores=tuple(stores),
                            query=tuple(prompt.input_ids),
                            target=encode(lines) + eos,
                            source=f"{commit[:10]} {change.path}",
                        )
                    )
                    taken += 1
        diffs.append([
            piece
            for c in changes
            if c.diff
            for piece in texts.write_passes(tokenizer, texts.edit(c.path, c.diff), options.write_chunk_tokens)
        ])
    if not episodes:
        raise EpisodeError(
            f"no episodes in {repository.root}: it needs commits that change text files the write policy allows, "
            "after an earlier commit or convention file to remember"
        )
    return episodes
