"""The status page every client shows (``dmem.memoryStatus``'s markdown, ``dmem-lsp memory status``).

Unit tests of ``status_page``: the facts of a folder from its files, manifest and states, and
the page made of them. The server's answer and the editors are tested with the real server
(test_memory_server, tests/editors).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from dmem_lsp.workspace.state_file import state_sha256
from dmem_lsp.workspace.status_page import folder_status, status_markdown


def write(time: str, store: str, source: str, kind: str, tokens: int | None = None) -> dict:
    entry = {"time": time, "store": store, "source": source, "kind": kind}
    return entry if tokens is None else {**entry, "tokens": tokens}


FOLDER = {
    "folder": "file:///home/me/my%20project",
    "directory": "/data/dmem-lsp/workspaces/abc",
    "fileBytes": 3 * 1024,
    "backbone": "Qwen/Qwen3-4B-Instruct-2507",
    "adapterSha256": "f" * 64,
    "readOnly": False,
    "adapter": "/adapters/tsw",
    "config": "/home/me/my project/.dmem/config.toml",
    "stores": {
        "conventions": {
            "tokens": 120,
            "sha256": "1" * 64,
            "lastWrites": [write("T2", "conventions", "README.md", "convention", 120)],
        },
        "debug": {"tokens": 0, "sha256": None, "lastWrites": [write("T3", "debug", "editor", "reset")]},
        "edits": {"tokens": 7, "sha256": "2" * 64, "lastWrites": [write("T1", "edits", "app.py", "edit", 7)]},
    },
    "skipped": [{"time": "T4", "source": ".env", "kind": "edit", "skipped": "a secret file"}],
}


def test_a_folder_is_a_heading_the_place_it_is_kept_its_adapter_and_a_row_per_store():
    page = status_markdown([FOLDER])
    assert page.startswith("# dmem memory\n\n## /home/me/my project\n")
    assert "Kept in `/data/dmem-lsp/workspaces/abc` (3.0 KiB)." in page
    assert "Adapter: `/adapters/tsw` (from `/home/me/my project/.dmem/config.toml`)." in page
    assert f"Backbone: `Qwen/Qwen3-4B-Instruct-2507`, adapter sha256 `{'f' * 16}`." in page
    assert "| store | tokens | state sha256 |\n|---|---:|---|\n" in page
    assert f"| conventions | 120 | `{'1' * 16}` |" in page
    assert "| debug | 0 | - |" in page  # no state yet
    assert f"| edits | 7 | `{'2' * 16}` |" in page
    assert "read-only" not in page and "Server:" not in page


def test_the_last_writes_of_every_store_are_in_time_order_then_what_was_refused():
    page = status_markdown([FOLDER])
    writes = page.split("### Last writes\n\n")[1].split("\n\n")[0].splitlines()
    assert writes == [
        "- T1: edits ← app.py (edit, 7 tokens)",
        "- T2: conventions ← README.md (convention, 120 tokens)",
        "- T3: debug ← editor (reset)",
    ]
    assert page.endswith("### Refused\n\n- T4: .env (edit): a secret file\n")


def test_no_folder_says_so_and_a_read_only_one_says_who_holds_it():
    assert "No workspace folder has a memory yet" in status_markdown([])
    page = status_markdown([{**FOLDER, "readOnly": True, "adapter": None, "skipped": []}])
    assert ", **read-only**: another dmem-lsp holds it." in page
    assert "Adapter:" not in page and "### Refused" not in page


def test_the_facts_of_a_folder_come_from_its_files_manifest_and_states(tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes(b"x" * 100)
    files = SimpleNamespace(dir=tmp_path, state_path=state)
    states = {"edits": np.ones((2, 1, 8, 8), np.float32), "debug": np.zeros((2, 1, 8, 8), np.float32)}
    audit = [write(f"T{i}", "edits", "app.py", "edit", i) for i in range(8)]
    audit.append({"time": "T9", "source": "key.pem", "kind": "edit", "skipped": "a secret"})
    manifest = {
        "backbone": {"id": "tiny/test"},
        "adapter_sha256": "a" * 64,
        "tokens": {"edits": 28},
        "audit": audit,
    }
    status = folder_status(files, manifest, states, tmp_path.as_uri(), last=3, server="not running", problems=["x"])
    assert status["directory"] == str(tmp_path) and status["fileBytes"] == 100
    assert status["backbone"] == "tiny/test" and status["adapterSha256"] == "a" * 64
    assert status["stores"]["edits"]["tokens"] == 28 and status["stores"]["debug"]["tokens"] == 0
    assert status["stores"]["edits"]["sha256"] == state_sha256(states["edits"])
    assert [e["time"] for e in status["stores"]["edits"]["lastWrites"]] == ["T5", "T6", "T7"]
    assert status["skipped"][0]["source"] == "key.pem"
    page = status_markdown([status])
    assert f"## {tmp_path}\n" in page and "(100 bytes)" in page
    assert "Server: not running." in page and "**Problem**: x" in page
    assert f"| edits | 28 | `{state_sha256(states['edits'])[:16]}` |" in page


def test_a_folder_without_a_state_file_has_no_bytes(tmp_path):
    files = SimpleNamespace(dir=tmp_path, state_path=tmp_path / "state.safetensors")
    status = folder_status(files, {"tokens": {"debug": 0}}, {}, tmp_path.as_uri())
    assert status["fileBytes"] == 0 and status["stores"] == {"debug": {"tokens": 0, "sha256": None, "lastWrites": []}}
    assert status["backbone"] is None and "Backbone:" not in status_markdown([status])
