"""Start-up paths of the real server: NF4 on the CPU, and an adapter for another backbone."""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types

import memory
from dmem_lsp.runtime.engine import Engine, EngineOptions
from dmem_lsp.runtime.prompts import completion_prompt
from tests.dmem_lsp.lsp import TIMEOUT, server_env, start, stop, wait_for_status
from tests.tiny_models import load_tiny_model

pytestmark = pytest.mark.asyncio

SOURCE = "def add(a, b):\n    return a"


def _inline(uri: str) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=1, character=12),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
    )


async def test_nf4_on_the_cpu_end_to_end(talkative_model, talkative_adapter, tmp_path):
    path = tmp_path / "add.py"
    path.write_text(SOURCE)
    args = [
        "--model", str(talkative_model), "--adapter", str(talkative_adapter), "--device", "cpu", "--quantization", "nf4"
    ]
    client, _ = await start(args, server_env(tmp_path), {"completion": {"maxTokens": 8}})
    try:
        # asked at once, while the model is still loading: the request waits for it
        assert not any(s["state"] == "ready" for s in client.statuses)
        result = await asyncio.wait_for(client.text_document_inline_completion_async(_inline(path.as_uri())), TIMEOUT)
        status = await wait_for_status(client, "ready", "error")
        assert status["state"] == "ready" and status["quantization"] == "nf4" and status["device"] == "cpu"
    finally:
        await stop(client)
    engine = Engine.load(
        EngineOptions(model=str(talkative_model), adapter=str(talkative_adapter), device="cpu", quantization="nf4")
    )
    assert type(engine.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    prompt = completion_prompt(engine.tokenizer, SOURCE, "", 1536, 512)
    expected = engine.generate(prompt.input_ids, max_new_tokens=8, stop=["\n"]).text
    assert expected and result.items[0].insert_text == expected


async def test_an_adapter_for_another_backbone_is_explained_and_the_server_stays_up(
    talkative_model, model_dirs, tmp_path
):
    other = memory.attach(load_tiny_model(model_dirs["smollm3"]), memory.DeltaMemConfig())
    adapter = memory.save_adapter(other, tmp_path / "smollm3-adapter", base_model_id="tiny/smollm3")
    path = tmp_path / "add.py"
    path.write_text(SOURCE)
    client, _ = await start(["--model", str(talkative_model), "--adapter", str(adapter)], server_env(tmp_path))
    try:
        status = await wait_for_status(client, "ready", "error")
        assert status["state"] == "error"
        assert "built for tiny/smollm3" in status["message"] and "num_layers" in status["message"]
        assert "--adapter" in status["message"]
        with pytest.raises(Exception, match="did not load.*--adapter"):
            await asyncio.wait_for(client.text_document_inline_completion_async(_inline(path.as_uri())), TIMEOUT)
        assert any("--adapter" in m.message for m in client.messages if m.type == types.MessageType.Error)
    finally:
        await stop(client)  # shutdown is answered
    assert client._server.returncode == 0
