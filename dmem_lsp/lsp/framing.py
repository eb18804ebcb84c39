"""Reading LSP messages out of a byte stream, whatever the stream holds.

pygls 2.1's reader matches ``Content-Length: N\\r\\n`` exactly and otherwise waits for it
silently: one lowercase header, one LF-only line ending or one lying length and the server
is deaf for good, and a huge length is allocated before it is read (``MemoryError``).
``FrameParser`` is a sans-IO state machine instead: bytes go in (``feed``), events come out,
and after any malformed input it resynchronises on the next ``Content-Length`` header.

- Header names are matched case-insensitively, lines may end in LF or CRLF, blank lines
  between messages are skipped, and a ``Content-Length`` line glued to the end of garbage
  (a body shorter than its length leaves that) still starts the next message.
- A body may not be longer than ``MAX_MESSAGE_BYTES``: a longer one is skipped without being
  kept, and reported with its first bytes so that a request can still be answered.
- A length that runs past the end of its message is cut at the next header inside it:
  ``Content-Length: N`` followed by a raw line break cannot occur in a JSON text (JSON
  strings hold no raw line breaks), so it is always the start of the next message. A body
  that ends with the first bytes of such a header gives them back for the same reason.

Nothing here reads or writes: ``reader`` runs the parser over stdin or a TCP stream.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_MESSAGE_BYTES", "Frame", "Junk", "FrameParser"]

MAX_MESSAGE_BYTES = 64 * 2**20
"""The largest message body read (64 MiB). A longer one is skipped unread, reported in the
log and to the user, and a request among them is answered with InvalidRequest."""
PREFIX_BYTES = 4096
"""How much of skipped bytes is kept, to find the id of a request among them."""
MAX_HEADER_LINE = 8192
"""A line without a line break longer than this is not a header: it is skipped."""

_HEADER = re.compile(rb"[ \t]*([!#-'*+.0-9A-Z^_`a-z|~-]+)[ \t]*:[ \t]*(.*?)[ \t]*")
_LENGTH_NAME = re.compile(rb"content-length", re.IGNORECASE)
_LENGTH_LINE = re.compile(rb"content-length[ \t]*:[ \t]*\d{1,18}[ \t]*\r?\n", re.IGNORECASE)
_LENGTH_PREFIX = re.compile(rb"content-length[ \t]*(?::[ \t]*\d{0,18}[ \t]*\r?)?", re.IGNORECASE)


@dataclass
class Frame:
    """A message body, as framed (it may still not be JSON)."""

    body: bytes
    note: str = ""
    """Why the body is shorter than its header said, if it is."""


@dataclass
class Junk:
    """Bytes that were not a message: how many, why, and the first of them."""

    size: int
    reason: str
    prefix: bytes
    """The first bytes of what would have been the body (for the id of a request)."""
    too_large: bool = False
    """A message over the size limit, skipped unread."""


Event = Frame | Junk


class FrameParser:
    """``feed(bytes) -> [Frame | Junk]``; ``close()`` reports what was left at the end."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._events: list[Event] = []
        # the header block being read
        self._in_headers = False
        self._length: bytes | None = None  # the value of its Content-Length
        # the body being read (all of it, or only its prefix when it is over the limit)
        self._body: bytearray | None = None
        self._declared = 0
        self._declared_read = 0  # how much of it was the message, when cut at the next header
        self._remaining = 0
        self._scanned = 0  # how far the body was searched for a header
        self._recent = b""  # the last bytes read of a skipped body
        # the run of junk being read
        self._junk = 0
        self._junk_reason = ""
        self._junk_prefix = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        while self._step():
            pass
        events, self._events = self._events, []
        return events

    def close(self) -> list[Event]:
        """The stream ended: what is left is junk."""
        if self._body is not None:
            self._add_junk(self._declared - self._remaining, "the stream ended inside a message body", self._body)
        elif self._buffer or self._in_headers:
            self._add_junk(len(self._buffer), "the stream ended inside a header block", self._buffer)
        self._flush_junk()
        self._buffer.clear()
        self._body, self._in_headers = None, False
        events, self._events = self._events, []
        return events

    # -- headers ---------------------------------------------------------------------------

    def _step(self) -> bool:
        if self._body is not None:
            return self._read_body()
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_HEADER_LINE:  # not a header: skip it, but a header may start at its end
                cut = len(self._buffer) - 64
                self._add_junk(cut, "a line too long to be a header", self._buffer[:cut])
                del self._buffer[:cut]
            return False
        line = bytes(self._buffer[:end]).rstrip(b"\r")
        del self._buffer[: end + 1]
        self._header_line(line, end + 1)
        return True

    def _header_line(self, line: bytes, size: int) -> None:
        glued = _LENGTH_NAME.search(line, 1)
        if glued is not None and line[: glued.start()].strip():
            # a Content-Length glued to the end of something else (a body shorter than its length)
            self._header_line(line[: glued.start()], glued.start())
            self._header_line(line[glued.start() :], size - glued.start())
            return
        if not line.strip():
            if self._in_headers:
                self._end_headers()
            elif line:
                self._add_junk(size, "bytes outside any message", line)
            return  # blank lines between messages are harmless
        match = _HEADER.fullmatch(line) if len(line) <= MAX_HEADER_LINE else None
        if match is None:
            if self._in_headers:
                self._in_headers, self._length = False, None
                self._add_junk(0, "a header block with a line that is not a header", b"")
            self._add_junk(size, "bytes outside any message", line)
            return
        if match.group(1).lower() == b"content-length":
            if self._length is not None:  # a second one: the first message was cut short
                self._add_junk(0, "a header block cut short by another Content-Length", b"")
            self._flush_junk()  # a message starts here
            self._length = match.group(2)
        self._in_headers = True  # Content-Type and the like are accepted and ignored

    def _end_headers(self) -> None:
        value, self._in_headers, self._length = self._length, False, None
        if value is None:
            self._start_junk("a header block without Content-Length")
        elif not (value.isdigit() and len(value) <= 18):
            self._start_junk(f"Content-Length {value[:40].decode('ascii', 'replace')!r} is not a number of bytes")
        else:
            self._flush_junk()
            self._body, self._declared = bytearray(), int(value)
            self._remaining, self._scanned, self._recent = self._declared, 0, b""

    # -- bodies ----------------------------------------------------------------------------

    def _read_body(self) -> bool:
        if self._remaining and not self._buffer:
            return False
        take = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(take)]
        self._remaining -= len(take)
        skipping = self._declared > self.max_message_bytes
        if skipping:  # keep the first bytes (for an id) and the last (for a header)
            self._body += take[: max(0, PREFIX_BYTES - len(self._body))]
            recent = self._recent + take
            self._recent = recent[-256:]
        else:
            self._body += take
            recent = self._body
        if self._cut_at_header(recent, skipping):
            return True
        if not self._remaining:
            self._finish_body(self._give_back_partial_header(recent, skipping))
        return True

    def _cut_at_header(self, recent: bytes | bytearray, skipping: bool) -> bool:
        """A Content-Length line inside the body: the next message starts there."""
        start = 0 if skipping else max(0, self._scanned - 64)
        self._scanned = len(recent)
        if recent.find(b"\n", start) < 0:
            return False
        match = _LENGTH_LINE.search(recent, start)
        if match is None:
            return False
        self._give_back(recent, match.start(), skipping)
        self._finish_body(True)
        return True

    def _give_back_partial_header(self, recent: bytes | bytearray, skipping: bool) -> bool:
        """The body ends with the first bytes of a Content-Length line: they start the next message."""
        for i in range(max(0, len(recent) - 40), len(recent)):
            if recent[i] in b"cC":
                tail = bytes(recent[i:])
                if b"content-length".startswith(tail.lower()) or _LENGTH_PREFIX.fullmatch(tail):
                    self._give_back(recent, i, skipping)
                    return True
        return False

    def _give_back(self, recent: bytes | bytearray, at: int, skipping: bool) -> None:
        rest = bytes(recent[at:])
        self._buffer[:0] = rest
        self._declared_read = self._declared - self._remaining - len(rest)
        self._remaining = 0
        if not skipping:
            del self._body[at:]

    def _finish_body(self, cut: bool) -> None:
        body, self._body = self._body, None
        note = ""
        if cut:
            note = f"its Content-Length said {self._declared} bytes, the next message began after {self._declared_read}"
        if self._declared > self.max_message_bytes:
            limit = f"{self.max_message_bytes / 2**20:g} MiB"
            self._start_junk(f"a Content-Length of {self._declared} bytes is over the {limit} limit")
            self._add_junk(self._declared_read if cut else self._declared, "", body)
            self._events.append(Junk(self._junk, self._junk_reason, bytes(self._junk_prefix), too_large=True))
            self._junk, self._junk_reason, self._junk_prefix = 0, "", bytearray()
            return
        self._events.append(Frame(bytes(body), note))

    # -- junk ------------------------------------------------------------------------------

    def _start_junk(self, reason: str) -> None:
        """A broken header block: the bytes after it (its body) start a new run of junk."""
        self._flush_junk()
        self._junk_reason = reason

    def _add_junk(self, size: int, reason: str, data: bytes | bytearray) -> None:
        self._junk_reason = self._junk_reason or reason
        self._junk += size
        self._junk_prefix += data[: max(0, PREFIX_BYTES - len(self._junk_prefix))]

    def _flush_junk(self) -> None:
        if self._junk or self._junk_reason:
            self._events.append(Junk(self._junk, self._junk_reason, bytes(self._junk_prefix)))
        self._junk, self._junk_reason, self._junk_prefix = 0, "", bytearray()
