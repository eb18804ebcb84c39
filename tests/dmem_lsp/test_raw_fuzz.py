"""A bounded, seeded fuzz of the real server's reader: 200 random and mutated frames.

They go in bursts of 10, each burst followed by a valid probe request that must get its
own answer (a result, not an error) exactly once; no answer may carry a traceback, and the
server must still shut down and exit 0 at the end. The frames are mutations of valid
messages (headers, lengths, ids, bodies) and plain random bytes; none is a request that
needs the model, so none is ever loaded.
"""

from __future__ import annotations

import json
import random

from tests.dmem_lsp.test_raw_protocol import answers_until_sentinel, assert_no_traceback, initialize, start, write

SEED = 20261201
FRAMES = 200
BURST = 10

TEMPLATES = [
    {"jsonrpc": "2.0", "method": "dmem/noSuchMethod", "params": {"a": [1, 2, {"b": "c"}]}},
    {
        "jsonrpc": "2.0",
        "method": "textDocument/codeAction",
        "params": {
            "textDocument": {"uri": "file:///f.py"},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 1, "character": 0}},
            "context": {"diagnostics": []},
        },
    },
    {
        "jsonrpc": "2.0",
        "method": "textDocument/hover",
        "params": {"textDocument": {"uri": "file:///f.py"}, "position": {"line": 0, "character": 0}},
    },
    {"jsonrpc": "2.0", "method": "textDocument/didSave", "params": {"textDocument": {"uri": "file:///f.py"}}},
    {"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 3}},
    {"jsonrpc": "2.0", "method": "$/setTrace", "params": {"value": "off"}},
    {
        "jsonrpc": "2.0",
        "method": "dmem/explain",
        "params": {
            "textDocument": {"uri": "file:///missing.py"},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}},
        },
    },
]
IDS = [None, {"a": 1}, [1], True, 1.5, "", -1, 2**70]


def message(rng: random.Random, number: int) -> dict:
    chosen = json.loads(json.dumps(rng.choice(TEMPLATES)))
    if rng.random() < 0.7:
        chosen["id"] = number  # a request (ids of fuzz frames are ints; probes' are strings)
    roll = rng.random()
    if roll < 0.1:
        chosen["id"] = rng.choice(IDS)
    elif roll < 0.15:
        del chosen["jsonrpc"]
    elif roll < 0.2:
        chosen["jsonrpc"] = rng.choice(["1.0", 2, None])
    elif roll < 0.25:
        chosen["method"] = rng.choice([5, None, ["x"], ""])
    elif roll < 0.3:
        chosen["params"] = rng.choice(["x", 5, [], None]) 
    return chosen


def body(rng: random.Random, number: int) -> bytes:
    raw = json.dumps(message(rng, number)).encode()
    roll = rng.random()
    if roll < 0.1:  # flip bytes
        data = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if roll < 0.15:
        return raw[: rng.randrange(len(raw))]
    if roll < 0.2:
        return raw[:-1] + b', "x": "\xc3\x28\xff"}'  # invalid UTF-8
    if roll < 0.25:
        depth = rng.choice([50, 5000, 50_000])
        return raw[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    if roll < 0.28:
        return rng.choice([b"[]", b"5", b'"s"', b"null", b"[" + raw + b"]", b""])
    return raw


def header(rng: random.Random, length: int) -> bytes:
    roll = rng.random()
    if roll < 0.35:
        return b"Content-Length: %d\r\n\r\n" % length
    variants = [
        b"content-length: %d\r\n\r\n" % length,
        b"Content-Length: %d\n\n" % length,
        b"Content-Length:%d\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" % length,
        b"Content-Length: %d\r\n\r\n" % max(0, length - rng.randint(1, 40)),
        b"Content-Length: %d\r\n\r\n" % (length + rng.randint(1, 400)),
        b"Content-Length: %d\r\n\r\n" % rng.choice([2**32, 10**14, 10**18, 64 * 2**20 + 1]),
        b"Content-Length: %s\r\n\r\n" % rng.choice([b"abc", b"-5", b"1e3", b"0x10", b"", b" 12 34"]),
        b"Content-Type: application/vscode-jsonrpc\r\n\r\n",
        b"Content-Length: %d\r\n" % length,  # no blank line
        b"Content-Len",
        b"",
    ]
    return rng.choice(variants)


def frame(rng: random.Random, number: int) -> bytes:
    if rng.random() < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
    payload = body(rng, number)
    return header(rng, len(payload)) + payload


def test_fuzzed_frames_never_make_the_server_deaf_or_answer_twice(tmp_path):
    rng = random.Random(SEED)
    server = start(tmp_path)
    probes = []
    try:
        initialize(server)
        for burst in range(FRAMES // BURST):
            data = b"".join(frame(rng, burst * BURST + n) for n in range(BURST))
            probe = f"probe-{burst}"
            probes.append(probe)
            probe_body = json.dumps({**TEMPLATES[1], "id": probe}).encode()
            write(server, data + b"Content-Length: %d\r\n\r\n" % len(probe_body) + probe_body)
            answer = server.response(probe)
            assert answer["result"][0]["title"] == "Explain with dmem", (burst, answer)
        answers_until_sentinel(server)  # every answer to the frames so far has been read
        for probe in probes:
            assert len([m for m in server.received if m.get("id") == probe and "method" not in m]) == 1, probe
        assert_no_traceback(server)
        errors = [m["error"] for m in server.received if "error" in m and "method" not in m]
        assert all("\n" not in error["message"] and "data" not in error for error in errors)
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
