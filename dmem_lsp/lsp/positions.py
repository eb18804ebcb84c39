"""LSP positions to offsets in a document's text, without splitting the whole document.

pygls' ``TextDocument.offset_at_position`` splits the whole text into lines (twice) and
sums their lengths: about 0.3 s and a tuple of every line at the end of a 16 MB document,
on each request. ``offset_at`` gives the same offset (pygls' lines: ``str.splitlines``,
its position codec for UTF-16 or UTF-8 characters) by counting newlines at C speed, a
64 KiB block at a time, and converting only the cursor's line. A ``LineCache`` remembers,
for one text, where the last line asked for starts and how much of the text is known to
break lines only at ``\\n`` and ``\\r\\n``; ``Document`` carries it across edits, so at a
cursor where the user types each request counts from that line's start, not from the top.
A document whose lines before the cursor are also broken by something else (a lone
``\\r``, a form feed, U+2028, ...) takes pygls' own path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types

__all__ = ["LineCache", "offset_at"]

BLOCK = 1 << 16
OTHER_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""What ``str.splitlines`` breaks lines at besides ``\\n`` and ``\\r``."""


@dataclass
class LineCache:
    """What is known of one text: line ``line`` starts at ``start`` (lines counted at
    ``\\n``), and ``text[:clean]`` breaks lines only at ``\\n`` and ``\\r\\n``."""

    text: str | None = None
    line: int = 0
    start: int = 0
    clean: int = 0

    def use(self, text: str) -> LineCache:
        """This cache, emptied first unless it is about ``text`` (the very object)."""
        if self.text is not text:
            self.text, self.line, self.start, self.clean = text, 0, 0, 0
        return self

    def splice(self, new: str, start: int, end: int, inserted: str) -> None:
        """``new`` is the text with ``[start, end)`` replaced by ``inserted``: keep what still holds."""
        old = self.text
        if old is None:
            self.use(new)
            return
        if self.start > start:
            if end < self.start:  # the whole change lies before the line: it moves
                self.line += inserted.count("\n") - old.count("\n", start, end)
                self.start += len(inserted) - (end - start)
            else:
                self.line, self.start = 0, 0
        self.clean = min(self.clean, max(0, start - 1))  # a \r before the change may now stand alone
        self.text = new


def _line_start(source: str, lines: int, position: int = 0) -> int | None:
    """Where the line ``lines`` newlines after ``position`` starts; None when the text has fewer."""
    remaining = lines
    while remaining:
        if position >= len(source):
            return None
        count = source.count("\n", position, position + BLOCK)
        if count >= remaining:
            for _ in range(remaining):
                position = source.find("\n", position) + 1
            return position
        remaining -= count
        position += BLOCK
    return position


def _only_newlines(source: str, begin: int, end: int) -> bool:
    """True when ``source[begin:end]`` breaks lines only at ``\\n`` and ``\\r\\n`` (memchr speed)."""
    if any(source.find(ch, begin, end) >= 0 for ch in OTHER_BREAKS):
        return False
    return source.find("\r", begin, end) < 0 or source.count("\r", begin, end) == source.count("\r\n", begin, end + 1)


def _clean_to(source: str, cache: LineCache, end: int) -> bool:
    if end > cache.clean:
        if not _only_newlines(source, cache.clean, end):
            return False
        cache.clean = end
    return True


def offset_at(
    document,
    position: types.Position,
    slow: Callable[[types.Position], int] | None = None,
    cache: LineCache | None = None,
) -> int:
    """``document.offset_at_position(position)`` for a pygls ``TextDocument``, in time
    proportional to the distance from the line ``cache`` knows (the top without one) at C
    speed, with no list of lines; ``slow`` is pygls' own conversion, for the documents it
    must take (default: the document's method)."""
    slow = slow or document.offset_at_position
    source = document.source
    codec = document.position_codec
    cache = (cache or LineCache()).use(source)
    if position.line >= cache.line:
        start = _line_start(source, position.line - cache.line, cache.start)
    else:
        start = _line_start(source, position.line)
    if start is None or start == len(source) and position.line > 0:
        # past the last line (the empty line after a final newline, too): pygls answers
        # the start of the last line plus that line's length in client units
        if not source or not _clean_to(source, cache, len(source)):
            return slow(position)
        last = source.rfind("\n", 0, len(source) - 1) + 1
        return last + codec.client_num_units(source[last:])
    cache.line, cache.start = position.line, start
    newline = source.find("\n", start)
    end = len(source) if newline < 0 else newline + 1
    if not _clean_to(source, cache, end):
        return slow(position)
    at = codec.position_from_client_units([source[start:end]], types.Position(line=0, character=position.character))
    return start + at.character
