"""``FrameParser``: every malformed frame is reported and the next valid one is read.

Each case is fed whole, one byte at a time and in 7-byte pieces (a pipe may cut anywhere),
followed by a valid message that must come out intact. ``salvage_request`` finds the id of
a broken request only at the top level of its body.
"""

from __future__ import annotations

import json

import pytest

from dmem_lsp.lsp.framing import Frame, FrameParser, Junk
from dmem_lsp.lsp.protocol import salvage_request


def body(id_: int | str = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": "dmem/x", "params": {}}).encode()


def framed(payload: bytes, header: bytes | None = None) -> bytes:
    return (b"Content-Length: %d\r\n\r\n" % len(payload) if header is None else header) + payload


MALFORMED = {
    "truncated header": b"Content-Len",
    "header without its blank line": b"Content-Length: 5",
    "length too short": framed(body(), b"Content-Length: 10\r\n\r\n"),
    "length too long": framed(body(), b"Content-Length: 500\r\n\r\n"),
    "length too long by 3": framed(body(), b"Content-Length: %d\r\n\r\n" % (len(body()) + 3)),
    "length not a number": framed(body(), b"Content-Length: abc\r\n\r\n"),
    "negative length": framed(body(), b"Content-Length: -5\r\n\r\n"),
    "no Content-Length": framed(body(), b"Content-Type: application/vscode-jsonrpc\r\n\r\n"),
    "4 GB length": framed(body(), b"Content-Length: 4294967296\r\n\r\n"),
    "10**14 length": framed(body(), b"Content-Length: %d\r\n\r\n" % 10**14),
    "binary junk": b"\x00\xff\xfe junk\r\n\r\n\n more junk",
    "a header line with no end": b"X-Junk: " + b"y" * 20_000,
}
WELL_FORMED_VARIANTS = {
    "lowercase header": framed(body(), b"content-length: %d\r\n\r\n" % len(body())),
    "LF-only line endings": framed(body(), b"Content-Length: %d\n\n" % len(body())),
    "no space and a Content-Type": framed(body(), b"Content-Type: x\r\nCONTENT-LENGTH:%d\r\n\r\n" % len(body())),
    "blank lines before": b"\r\n\n" + framed(body()),
}


def feed(data: bytes, piece: int | None) -> list:
    parser = FrameParser()
    if piece is None:
        return parser.feed(data)
    return [event for start in range(0, len(data), piece) for event in parser.feed(data[start : start + piece])]


@pytest.mark.parametrize("piece", [None, 1, 7], ids=["whole", "bytewise", "7-byte pieces"])
@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_the_next_message_is_read_after_a_malformed_frame(case, piece):
    probe = body("probe")
    events = feed(MALFORMED[case] + framed(probe), piece)
    frames = [event.body for event in events if isinstance(event, Frame)]
    assert frames[-1] == probe
    assert probe not in frames[:-1]
    # what was wrong is said: a Junk event, or a frame that is not the message it claimed to be
    assert any(isinstance(event, Junk) for event in events) or any(
        e.note or e.body != body() for e in events if e.body != probe
    )


@pytest.mark.parametrize("case", WELL_FORMED_VARIANTS, ids=list(WELL_FORMED_VARIANTS))
def test_header_variants_are_read(case):
    events = feed(WELL_FORMED_VARIANTS[case] + framed(body("probe")), 1)
    assert events == [Frame(body()), Frame(body("probe"))]


def test_an_over_long_message_is_skipped_unkept_and_reported_with_its_start():
    parser = FrameParser(max_message_bytes=1000)
    start = b'{"jsonrpc": "2.0", "id": 9, "method": "textDocument/didOpen", "params": {"text": "'
    events = parser.feed(b"Content-Length: 200000\r\n\r\n" + start)
    for _ in range(10):
        events += parser.feed(b"x" * 19_000)  # nothing of it is kept
        assert len(parser._body) <= 4096
    events += parser.feed(b"x" * (200_000 - len(start) - 190_000) + framed(body("probe")))
    junk = [event for event in events if isinstance(event, Junk)]
    assert len(junk) == 1 and "200000 bytes is over the" in junk[0].reason and junk[0].prefix.startswith(start)
    assert salvage_request(junk[0].prefix) == (9, "textDocument/didOpen")
    assert events[-1] == Frame(body("probe"))


def test_the_end_of_the_stream_reports_what_was_left():
    parser = FrameParser()
    assert parser.feed(b"Content-Length: 50\r\n\r\n{") == []
    [junk] = parser.close()
    assert "ended inside a message body" in junk.reason


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"jsonrpc": "2.0", "id": 3, "method": "m", "params": {', (3, "m")),
        ('{"method": "m", "params": {"id": 5}, "id": "a"', ("a", "m")),
        ('{"params": {"id": 5, "method": "inner"}}', None),  # only inside params
        ('{"id": null, "method": "m"}', None),
        ('{"id": {"x": 1}, "method": "m"}', None),
        ('{"jsonrpc": "2.0", "id": 4, "meth', (4, None)),  # cut before the method
        ('x", "id": 3, "method": "m"}', None),  # the rest of a cut body
        ('{"s": "\\"id\\": 4, ", "method": "m"}', None),  # "id" inside a string
        ('{"id": 12', None),  # cut inside the id, perhaps
        ('{"id": "ab', None),  # cut inside the id
    ],
)
def test_salvage_request_reads_only_top_level_members(text, expected):
    assert salvage_request(text.encode()) == expected
