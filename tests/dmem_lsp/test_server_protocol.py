"""The server over raw pipes: initialize without torch, and bad input always answered.

pygls 2.1 drops a request whose params do not fit their type (the client waits forever)
and a body that is not JSON; this server answers both. These tests speak JSON-RPC byte by
byte, because a well-behaved client cannot send such messages.
"""

from __future__ import annotations

import re

from tests.dmem_lsp.lsp import RawServer, server_env

POSITION = {"line": 0, "character": 0}


def test_initialize_is_answered_without_importing_torch(talkative_model, tmp_path):
    # --stdio: the default, and accepted because many clients pass it
    args = ["--stdio", "--model", str(talkative_model), "--adapter", "none"]
    server = RawServer(args, server_env(tmp_path), ("-X", "importtime"))
    server.request(1, "initialize", {"capabilities": {}, "processId": None})
    result = server.response(1)["result"]
    capabilities = result["capabilities"]
    assert result["serverInfo"]["name"] == "dmem-lsp"
    assert "inlineCompletionProvider" in capabilities and "completionProvider" in capabilities
    assert set(capabilities["executeCommandProvider"]["commands"]) == {
        "dmem.explain", "dmem.rememberDebugStep", "dmem.acceptCompletion", "dmem.resetMemory", "dmem.memoryStatus"
    }
    assert capabilities["textDocumentSync"]["save"] == {"includeText": False}
    assert capabilities["codeActionProvider"]
    assert server.close() == 0
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in b"".join(server.stderr).decode().splitlines() if "|" in line
    }
    assert "pygls" in imported  # the import log is there ...
    assert not {"torch", "transformers"} & imported  # ... and never loaded the model stack:
    # of memory/, only its lazy package, the store names (memory.config) and the atomic write
    # (memory.files), which import no torch
    assert {name for name in imported if name.split(".")[0] == "memory"} <= {"memory", "memory.config", "memory.files"}



def test_a_client_with_inline_completion_gets_no_completion_provider(talkative_model, tmp_path):
    """VS Code asks for both when both are advertised, and the popup's request cancels the
    ghost text's (one cancellation key per document): such a client gets ghost text only."""
    server = RawServer(["--model", str(talkative_model), "--adapter", "none"], server_env(tmp_path))
    capabilities = {"textDocument": {"inlineCompletion": {"dynamicRegistration": True}, "completion": {}}}
    server.request(1, "initialize", {"capabilities": capabilities, "processId": None})
    advertised = server.response(1)["result"]["capabilities"]
    assert "inlineCompletionProvider" in advertised and "completionProvider" not in advertised
    server.request(2, "textDocument/completion", {"textDocument": {"uri": "file:///a.py"}, "position": POSITION})
    assert server.response(2)["error"]["code"] == -32601  # nothing generates for its popup
    assert server.close() == 0

def test_bad_input_gets_an_error_response_and_a_failed_load_is_explained(tmp_path):
    missing = tmp_path / "no-such-model"
    server = RawServer(["--model", str(missing)], server_env(tmp_path))
    server.request(1, "initialize", {"capabilities": {"window": {"workDoneProgress": True}}, "processId": None})
    server.response(1)
    server.notify("initialized", {})

    server.send(b"{this is not json")
    error = server.wait_for(lambda m: "error" in m and m.get("id") is None)[0]["error"]
    assert error["code"] == -32700

    server.request(2, "textDocument/inlineCompletion", {"textDocument": {"uri": 5}, "position": {"line": "x"}})
    error = server.response(2)["error"]
    assert error["code"] == -32602
    assert "textDocument/inlineCompletion" in error["message"] and "params.position.line" in error["message"]

    server.request(3, "dmem/noSuchMethod", {})
    assert server.response(3)["error"]["code"] == -32601

    server.request(4, "dmem/explain", {"textDocument": {}})
    error = server.response(4)["error"]
    assert error["code"] == -32602 and "dmem/explain expects" in error["message"]

    server.request(
        5, "dmem/explain", {"textDocument": {"uri": "file:///x.py"}, "range": {"start": POSITION, "end": {"line": "y"}}}
    )
    error = server.response(5)["error"]
    assert error["code"] == -32602 and "end.line" in error["message"]

    server.request(6, "workspace/executeCommand", {"command": "dmem.explain", "arguments": [1, 2, 3]})
    assert server.response(6)["error"]["code"] == -32602

    server.request(7, "workspace/executeCommand", {"command": "dmem.noSuchCommand"})
    assert server.response(7)["error"]["code"] == -32602

    # the load fails: status error with the actionable message, and requests are told why
    status = server.wait_for(lambda m: m.get("method") == "dmem/status" and m["params"]["state"] == "error")[0]
    assert re.search(r"does not exist.*--model", status["params"]["message"])
    server.wait_for(lambda m: m.get("method") == "window/showMessage" and "--model" in m["params"]["message"])
    progress = [m["params"]["value"] for m in server.received if m.get("method") == "$/progress"]
    assert progress[0]["kind"] == "begin" and progress[-1]["kind"] == "end" and "--model" in progress[-1]["message"]
    (tmp_path / "a.py").write_text("import os\n")
    server.request(8, "textDocument/inlineCompletion", {
        "textDocument": {"uri": (tmp_path / "a.py").as_uri()}, "position": POSITION, "context": {"triggerKind": 1}
    })
    error = server.response(8)["error"]
    assert error["code"] == -32803 and "--model" in error["message"]
    assert server.close() == 0


def test_exit_without_shutdown_saves_the_memory_and_exits_1(talkative_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from dmem_lsp.workspace.files import workspace_dir

    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "pyproject.toml").write_text("[tool.ruff]\nline-length = 100\n")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    server = RawServer(
        ["--model", str(talkative_model), "--adapter", "none", "--device", "cpu"], server_env(tmp_path / "data")
    )
    try:
        options = {"memory": {"saveDebounceMs": 600_000}}  # nothing is saved on its own during the test
        server.request(
            1, "initialize", {"capabilities": {}, "rootUri": workspace.as_uri(), "initializationOptions": options}
        )
        server.response(1)
        server.notify("initialized", {})
        _, before = server.wait_for(lambda m: m.get("method") == "dmem/memory" and m["params"]["event"] == "written")
        assert not [m for m in before if m.get("method") == "dmem/memory" and m["params"]["event"] == "saved"]
        server.notify("exit")
        assert server.process.wait(timeout=60) == 1  # LSP: exit without shutdown is an error exit
    finally:
        if server.process.poll() is None:
            server.process.kill()
    states = load_file(str(workspace_dir(workspace) / "state.safetensors"))
    assert states["conventions"].any() and not states["edits"].any()
