"""Explanations as markdown files that an editor opens (``window/showDocument``).

Many clients drop what a command returns (eglot, ALE, Neovim's code actions), so the
"Explain with dmem" command writes its explanation to a file in a private cache directory
and asks the editor to show that file; the message shown where a client cannot open
documents names it too. Only the newest ``KEEP`` files are kept.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path, PurePosixPath

__all__ = ["KEEP", "directory", "write_explanation", "title"]

KEEP = 20
"""Explanation files kept; older ones are removed when a new one is written."""


def directory() -> Path:
    """``user_cache_dir("dmem-lsp")/explanations``, readable by the user alone."""
    from platformdirs import user_cache_dir

    path = Path(user_cache_dir("dmem-lsp")) / "explanations"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def title(name: str, first_line: int, last_line: int) -> str:
    """``main.py, lines 1–5`` (lines 1-based, inclusive)."""
    lines = f"line {first_line}" if first_line == last_line else f"lines {first_line}–{last_line}"
    return f"{name}, {lines}"


def write_explanation(name: str, first_line: int, last_line: int, code: str, language: str, markdown: str) -> Path:
    """Write the explanation of ``code`` (lines ``first_line``..``last_line`` of ``name``); its path.

    The file holds a heading, the code and the explanation. It is written whole (a temporary
    file renamed over it), so an editor never opens half of one.
    """
    folder = directory()
    stem = re.sub(r"[^\w.-]+", "_", PurePosixPath(name).name) or "code"
    path = folder / f"{stem}-{first_line}-{last_line}.md"
    fence = "````" if "```" in code else "```"
    text = (
        f"# {title(name, first_line, last_line)}\n\n{fence}{language}\n{code.rstrip()}\n{fence}\n\n{markdown.strip()}\n"
    )
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".explanation-", suffix=".md")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
    older = sorted(folder.glob("*.md"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]
    for old in older:
        old.unlink(missing_ok=True)
    return path
