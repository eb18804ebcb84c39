"""Raw bytes over pipes to the real server: it is never deaf and answers every request once.

Each family of malformed input from issue 16 is written byte for byte, followed by a valid
request that must be answered. "Exactly once" is checked with a sentinel request sent
after the case: the server reads messages in order and answers these cases as it reads
them, so every answer to the case comes before the sentinel's. No model is loaded
(``initialized`` is not sent, or the model path does not exist), except where a test needs
one to prove that it loads.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os

import pytest

from dmem_lsp.lsp.framing import Frame
from tests.dmem_lsp.lsp import RawServer, server_env

POSITION = {"line": 0, "character": 0}
RANGE = {"start": POSITION, "end": POSITION}
ids = itertools.count(1000)


def start(tmp_path, model=None) -> RawServer:
    return RawServer(["--model", str(model or tmp_path / "no-model"), "--adapter", "none"], server_env(tmp_path))


def initialize(server: RawServer) -> None:
    server.request("init", "initialize", {"capabilities": {}, "processId": None})
    assert "result" in server.response("init")


def write(server: RawServer, data: bytes) -> None:
    server.process.stdin.write(data)
    server.process.stdin.flush()


def framed(message: dict | bytes, header: bytes | None = None) -> bytes:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    return (b"Content-Length: %d\r\n\r\n" % len(body) if header is None else header) + body


def request(id_, method="dmem/noSuchMethod", params=None) -> dict:
    return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}


def answers_until_sentinel(server: RawServer) -> list[dict]:
    """Every response the server sent before answering a fresh sentinel request."""
    sentinel = f"sentinel-{next(ids)}"
    server.request(sentinel, "dmem/noSuchMethod", {})
    _, seen = server.wait_for(lambda m: m.get("id") == sentinel and "method" not in m)
    return [message for message in seen if "method" not in message]


def code_action(id_) -> bytes:
    return framed(request(id_, "textDocument/codeAction", {
        "textDocument": {"uri": "file:///probe.py"}, "range": RANGE, "context": {"diagnostics": []}
    }))


def assert_no_traceback(server: RawServer) -> None:
    for message in server.received:
        assert "traceback" not in json.dumps(message).lower(), message


def stop(server: RawServer) -> None:
    try:
        assert server.close() == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


MALFORMED = {  # raw bytes, and the id of the request inside them that must get an error (if any)
    "truncated header": (b"Content-Len", None),
    "header without its blank line": (b"Content-Length: 5", None),
    "lowercase content-length": (framed(request(1), b"content-length: %d\r\n\r\n" % len(json.dumps(request(1)))), 1),
    "LF-only line endings": (framed(request(2), b"Content-Length: %d\n\n" % len(json.dumps(request(2)))), 2),
    "length too short": (framed(request(3), b"Content-Length: 30\r\n\r\n"), 3),
    "length too long": (framed(request(4), b"Content-Length: 5000\r\n\r\n"), 4),
    "length not a number": (framed(request(5), b"Content-Length: five\r\n\r\n"), 5),
    "no Content-Length": (framed(request(6), b"Content-Type: application/vscode-jsonrpc\r\n\r\n"), 6),
    "a length of 4 GB": (framed(request(7), b"Content-Length: 4294967296\r\n\r\n"), 7),
    "a length of 10**14": (framed(request(8), b"Content-Length: 100000000000000\r\n\r\n"), 8),
    "binary junk": (b"\x00\xff\r\n\xfe\xfa junk\n\r\n", None),
}


def test_the_reader_resynchronises_after_every_malformed_frame(tmp_path):
    server = start(tmp_path)
    try:
        initialize(server)
        for case, (data, inner_id) in MALFORMED.items():
            probe = f"probe-{case}"
            write(server, data + code_action(probe))
            answer = server.response(probe)
            assert answer["result"][0]["title"] == "Explain with dmem", case
            responses = answers_until_sentinel(server)
            assert [m["id"] for m in server.received if m.get("id") == probe] == [probe], case
            if inner_id is not None:  # the request inside the broken frame got one answer: a result or an error
                inner = [m for m in server.received if m.get("id") == inner_id and "method" not in m]
                assert len(inner) == 1, (case, inner, responses)
        assert server.process.poll() is None
        assert_no_traceback(server)
        log = b"".join(server.stderr).decode(errors="replace")
        assert "skipped malformed input" in log and "over the 64 MiB limit" in log and "not a number of bytes" in log
        warned = [m for m in server.received if m.get("method") == "window/showMessage"]
        assert any("over the 64 MiB limit" in m["params"]["message"] for m in warned)
    finally:
        stop(server)


def test_every_request_gets_exactly_one_answer(tmp_path):
    deep = b'{"jsonrpc": "2.0", "id": 21, "method": "dmem/explain", "params": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {  # body -> (the answer's id, its error code or None for a result)
        "null id": (json.dumps(request(None)).encode(), None, -32600),
        "object id": (json.dumps(request({"a": 1})).encode(), None, -32600),
        "boolean id": (json.dumps(request(True)).encode(), None, -32600),
        "no jsonrpc": (json.dumps({"id": 10, "method": "dmem/explain", "params": {}}).encode(), 10, -32600),
        "jsonrpc 1.0": (json.dumps({**request(11), "jsonrpc": "1.0"}).encode(), 11, -32600),
        "method not a string": (json.dumps({**request(12), "method": 5}).encode(), 12, -32600),
        "invalid UTF-8": (
            b'{"jsonrpc": "2.0", "id": 13, "method": "dmem/explain", "params": {"a": "\xff\xfe"}}',
            13,
            -32700,
        ),
        "not JSON": (b'{"jsonrpc": "2.0", "id": 14, "method": ', 14, -32700),
        "not JSON, no id": (b"]]]", None, -32700),
        "a batch": (json.dumps([request(15)]).encode(), None, -32600),
        "deeply nested": (deep, 21, -32600),
        "didSave with an id": (
            json.dumps(request(16, "textDocument/didSave", {"textDocument": {"uri": "file:///a.py"}})).encode(),
            16,
            None,
        ),
        "didChangeConfiguration with an id": (
            json.dumps(request(17, "workspace/didChangeConfiguration", {"settings": {"dmem": {}}})).encode(),
            17,
            None,
        ),
        "workDoneProgress/cancel with an id": (
            json.dumps(request(18, "window/workDoneProgress/cancel", {"token": "t"})).encode(),
            18,
            None,
        ),
        "invalid params": (
            json.dumps(request(19, "textDocument/inlineCompletion", {"position": "x"})).encode(),
            19,
            -32602,
        ),
        "unknown method": (json.dumps(request(20)).encode(), 20, -32601),
        # last: initialized starts loading the model (which does not exist)
        "initialized with an id": (json.dumps(request(22, "initialized", {})).encode(), 22, None),
    }
    server = start(tmp_path)
    try:
        initialize(server)
        for case, (body, id_, code) in cases.items():
            write(server, framed(body))
            responses = answers_until_sentinel(server)
            assert len(responses) == 1, (case, responses)
            [answer] = responses
            assert answer["id"] == id_, (case, answer)
            if code is None:
                assert answer["result"] is None, (case, answer)
            else:
                assert answer["error"]["code"] == code, (case, answer)
                assert "\n" not in answer["error"]["message"] and "data" not in answer["error"]
        assert_no_traceback(server)
        status = server.wait_for(lambda m: m.get("method") == "dmem/status" and m["params"]["state"] == "error")[0]
        assert "does not exist" in status["params"]["message"]  # initialized (with its id) was handled
    finally:
        stop(server)


def test_before_initialize_and_after_shutdown(tmp_path):
    server = start(tmp_path)
    try:
        write(server, code_action(1))
        assert server.response(1)["error"]["code"] == -32002
        server.request(2, "shutdown")
        assert server.response(2)["error"]["code"] == -32002  # shutdown before initialize changes nothing
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": "file:///a.py", "languageId": "python", "version": 1, "text": "x"}},
        )
        assert answers_until_sentinel(server) == []  # a notification before initialize is dropped
        initialize(server)
        write(server, code_action(3))
        assert "result" in server.response(3)
        server.request(4, "initialize", {"capabilities": {}})
        assert server.response(4)["error"]["code"] == -32600
        server.request(5, "shutdown")
        assert server.response(5)["result"] is None
        write(server, code_action(6))
        error = server.response(6)["error"]
        assert error["code"] == -32600 and "shutting down" in error["message"]
        server.request(7, "shutdown")
        assert server.response(7)["error"]["code"] == -32600
        server.notify("exit")
        assert server.process.wait(timeout=60) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_shutdown_with_pending_requests_cancels_them_answers_null_and_exits_0(tmp_path):
    server = start(tmp_path)  # initialized is never sent: requests that need the model wait for it
    try:
        initialize(server)
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": "file:///a.py", "languageId": "python", "version": 1, "text": "x = "}},
        )
        server.request(
            2,
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": "file:///a.py"},
                "position": {"line": 0, "character": 4},
                "context": {"triggerKind": 1},
            },
        )
        server.request(3, "workspace/executeCommand", {"command": "dmem.memoryStatus", "arguments": []})
        server.request(4, "workspace/executeCommand", {"command": "dmem.rememberDebugStep", "arguments": ["a note"]})
        answers_until_sentinel(server)  # all three are pending
        server.request(5, "shutdown")
        assert server.response(5)["result"] is None
        server.notify("exit")
        assert server.process.wait(timeout=60) == 0
        while True:  # everything the server wrote, up to its end
            try:
                server.next(timeout=60)
            except EOFError:
                break
        for id_ in (2, 3, 4):
            [answer] = [m for m in server.received if m.get("id") == id_ and "method" not in m]
            assert answer["error"]["code"] == -32800
        assert "dictionary changed size" not in b"".join(server.stderr).decode(errors="replace")
    finally:
        if server.process.poll() is None:
            server.process.kill()


def test_shutdown_before_initialize_does_not_stop_the_model_loading(talkative_model, tmp_path):
    server = start(tmp_path, talkative_model)
    try:
        server.request(1, "shutdown")
        assert server.response(1)["error"]["code"] == -32002
        initialize(server)
        server.notify("initialized", {})
        status = server.wait_for(
            lambda m: m.get("method") == "dmem/status" and m["params"]["state"] in ("ready", "error")
        )[0]
        assert status["params"]["state"] == "ready", status
    finally:
        stop(server)


def test_a_large_message_under_the_limit_is_read(tmp_path):
    text = "\n" + "x = 1\n" * 500_000  # 3 MB: decoded on a thread, not on the event loop
    server = start(tmp_path)
    try:
        initialize(server)
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": "file:///big.py", "languageId": "python", "version": 1, "text": text}},
        )
        server.request(1, "dmem/explain", {"textDocument": {"uri": "file:///big.py"}, "range": RANGE})
        error = server.response(1)["error"]
        assert error["code"] == -32602 and "holds no code" in error["message"]  # the open document's blank line
    finally:
        stop(server)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_unopened_documents_are_read_only_when_regular_and_small(tmp_path):
    fifo = tmp_path / "fifo.py"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.py"
    with open(huge, "wb") as file:
        file.truncate(60 * 2**20)  # sparse: 60 MB without writing them
    small = tmp_path / "small.py"
    small.write_text("\n\nx = 1\n")
    server = start(tmp_path)
    try:
        initialize(server)
        cases = {
            fifo.as_uri(): "not a regular file",
            "file:///dev/zero": "not a regular file",
            tmp_path.as_uri(): "not a regular file",
            huge.as_uri(): "larger than 4 MiB",
            (tmp_path / "missing.py").as_uri(): "No such file",
        }
        for n, (uri, reason) in enumerate(cases.items()):
            server.request(
                n,
                "textDocument/inlineCompletion",
                {"textDocument": {"uri": uri}, "position": POSITION, "context": {"triggerKind": 1}},
            )
            error = server.response(n)["error"]
            assert (
                error["code"] == -32602 and "not open in the editor" in error["message"] and reason in error["message"]
            ), (uri, error)
        # a small regular file is read: the blank first line holds no code to explain
        server.request(10, "dmem/explain", {"textDocument": {"uri": small.as_uri()}, "range": RANGE})
        error = server.response(10)["error"]
        assert error["code"] == -32602 and "holds no code" in error["message"]
    finally:
        stop(server)


def test_an_internal_error_is_one_line_and_its_traceback_stays_in_the_log(caplog):
    """In this process: a handler that raises what no handler of the server raises on purpose."""
    from pygls.io_ import StdoutWriter

    from dmem_lsp.lsp.features import create_server

    server = create_server({})

    @server.feature("test/boom")
    def boom(ls, params):
        raise ValueError("boom,\n  on two lines")

    out = io.BytesIO()
    server.protocol.set_writer(StdoutWriter(out))

    async def talk() -> None:
        await server.protocol.receive_frame(Frame(json.dumps(request(1, "initialize", {"capabilities": {}})).encode()))
        await server.protocol.receive_frame(Frame(json.dumps(request(2, "test/boom")).encode()))

    asyncio.run(talk())
    server.worker.close()
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in out.getvalue().split(b"Content-Length: ")[1:]]
    [answer] = [body for body in bodies if body.get("id") == 2]
    assert answer["error"] == {"code": -32603, "message": "ValueError: boom, on two lines"}
    assert "Traceback" in caplog.text and "boom" in caplog.text
