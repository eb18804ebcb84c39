"""A whole session with the real server: loading, completions, explain, cancellation, settings.

One server (a subprocess, through pytest-lsp) serves the module: a tiny qwen3 that never
ends by itself, with a δ-mem adapter from a directory. The expected texts come from the
engine loaded in this process with the same model and adapter, greedy.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams, JsonRpcRequestCancelled
from pygls.uris import to_fs_path

from dmem_lsp.runtime.engine import Engine, EngineOptions
from dmem_lsp.runtime.prompts import explain_prompt, is_multiline
from tests.dmem_lsp.lsp import TIMEOUT, expected_completion, plain, server_env, start, stop, wait_for_status

pytestmark = pytest.mark.asyncio(loop_scope="module")

OPTIONS = {"completion": {"maxTokens": 12, "debounceMs": 0}, "explain": {"maxTokens": 16}}
SOURCE = "import os\n\ndef add(a, b):\n    return a + b\n\nclass Settings:\n    path = os.getcwd()\n"
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def engine(talkative_model, talkative_adapter):
    return Engine.load(EngineOptions(model=str(talkative_model), adapter=str(talkative_adapter), device="cpu"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def session(talkative_model, talkative_adapter, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("workspace")
    path = workspace / "settings.py"
    path.write_text(SOURCE)
    args = ["--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu"]
    client, result = await start(args, server_env(tmp_path_factory.mktemp("data")), OPTIONS)
    statuses_at_initialize = list(client.statuses)
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=SOURCE)
        )
    )
    yield client, result, statuses_at_initialize, uri
    await stop(client)


def at(line: int, character: int) -> types.Position:
    return types.Position(line=line, character=character)


def inline_params(uri, position, token=None, automatic=False):
    kind = types.InlineCompletionTriggerKind.Automatic if automatic else types.InlineCompletionTriggerKind.Invoked
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=position,
        context=types.InlineCompletionContext(trigger_kind=kind),
        work_done_token=token,
    )


async def test_initialize_comes_first_then_progress_then_ready(session):
    client, result, statuses_at_initialize, _ = session
    assert result.capabilities.inline_completion_provider is not None
    assert not any(s["state"] == "ready" for s in statuses_at_initialize)
    status = await wait_for_status(client, "ready", "error")
    assert status["state"] == "ready", status["message"]
    assert (status["device"], status["quantization"]) == ("cpu", "none")  # what was loaded, not "auto"
    states = [s["state"] for s in client.statuses]
    assert states.index("loading") < states.index("ready")
    ((token, reports),) = [
        (t, r)
        for t, r in client.progress_reports.items()
        if r and getattr(r[0], "title", "") == "dmem: loading the model"
    ]
    kinds = [report.kind for report in reports]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
    assert reports[-1].message == "ready"


@pytest.mark.parametrize(
    "line, character, multiline",
    [(3, 11, False), (2, 14, True), (6, 9, False)],
    ids=["mid-line", "after-a-colon", "before-code-on-the-line"],
)
async def test_inline_completion_is_the_engines_greedy_text(session, engine, line, character, multiline):
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    lines = SOURCE.splitlines(keepends=True)
    offset = sum(len(text) for text in lines[:line]) + character
    prefix, suffix = SOURCE[:offset], SOURCE[offset:]
    assert is_multiline(prefix.rsplit("\n", 1)[-1], suffix.split("\n", 1)[0]) == multiline
    expected = expected_completion(engine, prefix, suffix, multiline)
    assert expected  # the talkative model always says something

    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(line, character))), TIMEOUT
    )
    (item,) = result.items
    assert item.insert_text == expected
    assert item.range == types.Range(start=at(line, character), end=at(line, character))

    listed = await asyncio.wait_for(
        client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=at(line, character))
        ),
        TIMEOUT,
    )
    (entry,) = listed.items
    assert entry.text_edit.new_text == expected and listed.is_incomplete


async def test_a_completion_item_replaces_the_word_before_the_cursor(session, engine):
    """After ``return a`` the item starts with ``a`` and its edit starts before it, so clients that
    filter by the typed word (eglot, ALE) show it and accepting it keeps the ``a``."""
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    offset = SOURCE.index("return a") + len("return a")
    expected = expected_completion(engine, SOURCE[:offset], SOURCE[offset:], False)
    listed = await asyncio.wait_for(
        client.text_document_completion_async(
            types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=at(3, 12))
        ),
        TIMEOUT,
    )
    (entry,) = listed.items
    assert entry.text_edit.new_text == "a" + expected
    assert entry.text_edit.range == types.Range(start=at(3, 11), end=at(3, 12))
    assert entry.label.startswith("a") and entry.filter_text.startswith("a")


async def test_explain_returns_the_models_markdown(session, engine):
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    selection = types.Range(start=at(2, 0), end=at(4, 0))
    code = "def add(a, b):\n    return a + b\n"
    context = SOURCE
    prompt = explain_prompt(engine.tokenizer, code, context, "python", 1024)
    expected = engine.generate(prompt.input_ids, max_new_tokens=16).text.strip()
    assert expected

    result = await asyncio.wait_for(
        client.protocol.send_request_async(
            "dmem/explain",
            {
                "textDocument": {"uri": uri},
                "range": {"start": {"line": 2, "character": 0}, "end": {"line": 4, "character": 0}},
            },
        ),
        TIMEOUT,
    )
    assert plain(result) == {"markdown": expected}

    # lsprotocol's client converter reads any {command: ...} in a code action list as a
    # Command (stringifying the nested one), so take this result as plain JSON
    params = types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        range=selection,
        context=types.CodeActionContext(diagnostics=[]),
    )
    future = client.protocol.send_request("textDocument/codeAction", params, msg_id="code-action")
    client.protocol._result_types["code-action"] = None
    (action,) = plain(await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT))
    assert action["command"]["command"] == "dmem.explain" and action["title"] == "Explain with dmem"

    # the command answers at once; the explanation follows as a markdown file the client opens
    shown = len(client.shown_documents)
    via_command = await asyncio.wait_for(
        client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="dmem.explain", arguments=action["command"]["arguments"])
        ),
        TIMEOUT,
    )
    assert via_command is None

    async def opened():
        while len(client.shown_documents) == shown:
            client.document_shown.clear()
            await client.document_shown.wait()

    await asyncio.wait_for(opened(), TIMEOUT)
    document = client.shown_documents[-1]
    path = Path(to_fs_path(document.uri))
    assert document.take_focus and path.name == "settings.py-3-4.md"
    text = path.read_text()
    assert text.startswith("# settings.py, lines 3–4\n") and code in text and text.rstrip().endswith(expected)
    assert path.parent.stat().st_mode & 0o077 == 0  # the user's alone
    # under progress the server created (window/workDoneProgress/create), ended before the document opened
    (reports,) = [
        r
        for t, r in client.progress_reports.items()
        if r and getattr(r[0], "title", "") == "dmem: explain" and str(t).startswith("dmem-")
    ]
    assert reports[0].kind == "begin" and reports[-1].kind == "end"


async def test_an_explanation_stops_at_its_deadline_or_when_cancelled(session, engine):
    """Work a client gives up on (a timeout sends nothing, or $/cancelRequest) frees the worker."""
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    params = {
        "textDocument": {"uri": uri},
        "range": {"start": {"line": 2, "character": 0}, "end": {"line": 4, "character": 0}},
    }
    endless = {**OPTIONS, "explain": {"maxTokens": 100_000, "deadlineMs": 200}}
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=endless))
    cut = plain(await asyncio.wait_for(client.protocol.send_request_async("dmem/explain", params), TIMEOUT))
    assert cut["markdown"].endswith("_Cut short: explain.deadlineMs is 200 ms._")

    endless["explain"]["deadlineMs"] = 0  # no deadline: only $/cancelRequest stops it
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=endless))
    token = f"explain-{next(_ids)}"
    client.progress_reports[token] = []
    future = client.protocol.send_request("dmem/explain", {**params, "workDoneToken": token}, msg_id=token)

    async def generating():
        while not any(value.kind == "report" for value in client.progress_reports[token]):
            await client.wait_for_notification("$/progress")

    await asyncio.wait_for(generating(), TIMEOUT)
    client.protocol.notify("$/cancelRequest", types.CancelParams(id=token))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))
    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(3, 11))), TIMEOUT
    )
    assert result.items[0].insert_text


async def _start_long_completion(client, uri, msg_id):
    """Send a completion that runs to its (huge) token limit; return once it is generating."""
    token = f"long-{msg_id}"
    client.progress_reports[token] = []
    future = client.protocol.send_request(
        "textDocument/inlineCompletion", inline_params(uri, at(2, 14), token), msg_id=msg_id
    )

    async def generating():
        while not any(value.kind == "report" for value in client.progress_reports[token]):
            await client.wait_for_notification("$/progress")

    await asyncio.wait_for(generating(), TIMEOUT)
    return asyncio.wrap_future(future), token


async def test_a_long_generation_is_cancelled_and_the_next_request_is_answered(session, engine):
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    long = {**OPTIONS, "completion": {"maxTokens": 100_000, "debounceMs": 0, "stop": []}}
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=long))

    # $/cancelRequest
    first_id = f"cancel-{next(_ids)}"
    first, first_token = await _start_long_completion(client, uri, first_id)
    client.protocol.notify("$/cancelRequest", types.CancelParams(id=first_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(first, TIMEOUT)

    # the progress bar's cancel button (window/workDoneProgress/cancel)
    pressed, pressed_token = await _start_long_completion(client, uri, f"button-{next(_ids)}")
    client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=pressed_token))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(pressed, TIMEOUT)

    # a newer completion for the same document supersedes the running one
    second, _ = await _start_long_completion(client, uri, f"old-{next(_ids)}")
    newer_id = f"new-{next(_ids)}"
    newer, _ = await _start_long_completion(client, uri, newer_id)
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(second, TIMEOUT)
    client.protocol.notify("$/cancelRequest", types.CancelParams(id=newer_id))
    with pytest.raises(JsonRpcRequestCancelled):
        await asyncio.wait_for(newer, TIMEOUT)

    # generation really stopped: a following request is answered (not queued behind 100k tokens)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))
    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(3, 11))), TIMEOUT
    )
    lines = SOURCE.splitlines(keepends=True)
    offset = sum(len(text) for text in lines[:3]) + 11
    assert result.items[0].insert_text == expected_completion(engine, SOURCE[:offset], SOURCE[offset:], False)
    ends = [r for r in client.progress_reports[first_token] if getattr(r, "kind", None) == "end"]
    assert ends and ends[0].message == "cancelled"


async def test_automatic_triggers_are_debounced_and_invoked_ones_are_not(session, engine):
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    slow = {**OPTIONS, "completion": {"maxTokens": 12, "debounceMs": 600_000}}
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=slow))
    waiting = asyncio.wrap_future(  # sent now, not when awaited
        client.protocol.send_request("textDocument/inlineCompletion", inline_params(uri, at(3, 11), automatic=True))
    )
    invoked = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(3, 11))), TIMEOUT
    )
    assert invoked.items  # answered at once, though the automatic one before it is still waiting
    with pytest.raises(JsonRpcRequestCancelled):  # ... and it never ran: the newer request replaced it
        await asyncio.wait_for(waiting, TIMEOUT)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))


async def test_a_bad_setting_falls_back_and_the_user_is_told(session):
    client, _, _, uri = session
    shown = client.wait_for_notification("window/showMessage")
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(
            settings={"dmem": {**OPTIONS, "completion": {"maxTokens": "lots", "debounceMs": 0}}}
        )
    )
    message = await asyncio.wait_for(shown, TIMEOUT)
    assert message.type == types.MessageType.Warning
    assert "completion.maxTokens" in message.message and "using 64" in message.message
    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(3, 11))), TIMEOUT
    )
    assert result.items  # served with the default
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))


async def test_a_document_that_does_not_exist_is_invalid_params(session, tmp_path):
    client, _, _, _ = session
    missing = (tmp_path / "gone.py").as_uri()
    with pytest.raises(JsonRpcInvalidParams, match="cannot be read"):
        await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(missing, at(0, 0))), TIMEOUT)


async def test_changing_the_model_while_running_asks_for_a_restart(session):
    client, _, _, _ = session
    await wait_for_status(client, "ready")
    shown = client.wait_for_notification("window/showMessage")
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={**OPTIONS, "quantization": "nf4"})
    )
    message = await asyncio.wait_for(shown, TIMEOUT)
    assert "restart" in message.message and "quantization" in message.message
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))


async def test_settings_are_pulled_when_the_client_says_they_changed(session, engine):
    client, _, _, uri = session
    await wait_for_status(client, "ready")
    client.set_configuration({"completion": {"maxTokens": 3, "debounceMs": "soon"}}, section="dmem")
    shown = client.wait_for_notification("window/showMessage")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    assert "completion.debounceMs" in (await asyncio.wait_for(shown, TIMEOUT)).message  # pulled and applied
    result = await asyncio.wait_for(
        client.text_document_inline_completion_async(inline_params(uri, at(2, 14))), TIMEOUT
    )
    offset = SOURCE.index("b):") + 3
    assert result.items[0].insert_text == expected_completion(
        engine, SOURCE[:offset], SOURCE[offset:], True, max_tokens=3
    )
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=OPTIONS))


async def test_a_huge_document_is_answered_from_a_window_around_the_cursor(session, engine, tmp_path_factory):
    """4 MB open (outside the workspace, so nothing is written): a completion at its end and
    an explanation of all of it are the ones the engine gives for the whole text."""
    client, _, _, _ = session
    await wait_for_status(client, "ready")
    line = "    total = compute(a, b)  # é\n"
    text = line * (4_000_000 // len(line)) + SOURCE + "def f(x):\n    return "
    uri = (tmp_path_factory.mktemp("outside") / "huge.py").as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )
    end = at(text.count("\n"), len("    return "))
    result = await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(uri, end)), TIMEOUT)
    assert result.items[0].insert_text == expected_completion(engine, text, "", multiline=False)

    prompt = explain_prompt(engine.tokenizer, text, text, "python", 1024)
    expected = engine.generate(prompt.input_ids, max_new_tokens=16).text.strip()
    everything = {"start": {"line": 0, "character": 0}, "end": {"line": end.line, "character": end.character}}
    explained = await asyncio.wait_for(
        client.protocol.send_request_async("dmem/explain", {"textDocument": {"uri": uri}, "range": everything}), TIMEOUT
    )
    assert plain(explained) == {"markdown": expected}

    # an incremental change at the end, as typing sends it: the next completion sees it
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(range=types.Range(start=end, end=end), text="x + ")
            ],
        )
    )
    typed = at(end.line, end.character + len("x + "))
    result = await asyncio.wait_for(client.text_document_inline_completion_async(inline_params(uri, typed)), TIMEOUT)
    assert result.items[0].insert_text == expected_completion(engine, text + "x + ", "", multiline=False)
