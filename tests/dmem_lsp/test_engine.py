"""The engine: loading through from_pretrained, greedy generation, cancellation, clear errors."""

from __future__ import annotations

import pytest
import torch

import memory
from dmem_lsp.runtime.engine import Engine, EngineError, EngineOptions
from tests.memory.helpers import strengthen, token_ids


@pytest.fixture(scope="module")
def engine(model_dirs):
    engine = Engine.load(EngineOptions(model=str(model_dirs["qwen3"]), adapter=None, device="cpu"))
    strengthen(engine.memory)
    with torch.no_grad(), engine.memory.writing(store="conventions"):
        engine.model(input_ids=token_ids(1, 30, seed=3))
    return engine


def test_greedy_generation_equals_transformers_generate(engine):
    prompt = engine.tokenizer.encode("def add(a, b):\n", add_special_tokens=False)
    result = engine.generate(prompt, max_new_tokens=10)
    eos = engine.tokenizer.eos_token_id
    with torch.no_grad():
        reference = engine.model.generate(
            torch.tensor([prompt]), max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=eos
        )[0, len(prompt) :].tolist()
    if eos in reference:
        reference = reference[: reference.index(eos)]
    assert result.token_ids == reference and reference
    assert result.text == engine.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert not result.cancelled


def test_generation_reads_memory_and_changes_no_store(engine):
    prompt = engine.tokenizer.encode("import os\n", add_special_tokens=False)
    before = engine.memory.states()
    with_memory = engine.generate(prompt, max_new_tokens=8)
    assert all(torch.equal(before[n], s) for n, s in engine.memory.states().items())
    engine.memory.reset()
    without = engine.generate(prompt, max_new_tokens=8)
    engine.memory.load_states(before)
    assert with_memory.token_ids != without.token_ids


def test_stop_flag_ends_generation_within_one_step(engine):
    checks = []

    def should_stop():
        checks.append(1)
        return len(checks) > 3

    result = engine.generate(
        engine.tokenizer.encode("x", add_special_tokens=False), max_new_tokens=50, should_stop=should_stop
    )
    assert result.cancelled and len(result.token_ids) == 3


def test_stop_strings_cut_the_text(engine):
    prompt = engine.tokenizer.encode("for i in", add_special_tokens=False)
    full = engine.generate(prompt, max_new_tokens=12)
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = engine.generate(prompt, max_new_tokens=12, stop=[stop])
    assert cut.text == full.text[: full.text.find(stop)]


def test_nf4_on_the_cpu_with_an_adapter_directory(model_dirs, engine, tmp_path):
    path = memory.save_adapter(engine.memory, tmp_path / "adapter")
    nf4 = Engine.load(
        EngineOptions(model=str(model_dirs["qwen3"]), adapter=str(path), device="cpu", quantization="nf4")
    )
    assert type(nf4.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    for name, tensor in engine.memory.adapter_state_dict().items():
        assert torch.equal(nf4.memory.adapter_state_dict()[name], tensor)
    assert nf4.generate(nf4.tokenizer.encode("a", add_special_tokens=False), max_new_tokens=3).token_ids


def test_errors_say_what_to_do(model_dirs, engine, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EngineError, match=r"cannot find the model 'nobody/no-model'.*--model PATH"):
        Engine.load(EngineOptions(model="nobody/no-model", adapter=None, device="cpu"))
    path = memory.save_adapter(engine.memory, tmp_path / "qwen3-adapter", base_model_id="tiny/qwen3")
    with pytest.raises(EngineError, match=r"built for tiny/qwen3.*--adapter"):
        Engine.load(EngineOptions(model=str(model_dirs["smollm3"]), adapter=str(path), device="cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="--device cpu"):
            Engine.load(EngineOptions(model=str(model_dirs["qwen3"]), adapter=None, device="cuda"))
    with pytest.raises(ValueError, match="quantization"):
        EngineOptions(quantization="int3")


def test_workspace_adapters_swap_in_and_refuse_what_cannot_swap(model_dirs, tmp_path):
    from dmem_lsp.workspace.config import AdapterSource
    from tests.tiny_models import load_tiny_model

    model = str(model_dirs["qwen3"])

    def adapter_dir(name, config, seed, architecture="qwen3"):
        mem = memory.attach(load_tiny_model(model_dirs[architecture]), config)
        strengthen(mem, seed=seed)
        return AdapterSource(str(memory.save_adapter(mem, tmp_path / name)), origin=f"{name}'s config")

    msw = adapter_dir("msw", memory.DeltaMemConfig(state_heads=4), 1)
    tsw = adapter_dir("tsw", memory.DeltaMemConfig(), 2)
    foreign = adapter_dir("foreign", memory.DeltaMemConfig(), 3, architecture="smollm3")

    # a workspace's adapter is attached first: its configuration is the one loaded
    engine = Engine.load(EngineOptions(model=model, adapter=tsw.name, device="cpu"), prefer=msw)
    assert engine.memory.config.state_heads == 4 and engine.active.source == msw
    with pytest.raises(EngineError, match=r"another δ-mem configuration.*state_heads 1 \(loaded: 4\)"):
        engine.adapter(None)  # the settings' TSW adapter cannot swap into MSW layers
    with pytest.raises(EngineError, match="another δ-mem configuration"):
        engine.adapter(None)  # refused again, from memory

    # one that cannot be used falls back to the settings' adapter, and stays refused
    engine = Engine.load(EngineOptions(model=model, adapter=None, device="cpu"), prefer=foreign)
    assert engine.active.source is None and engine.memory.config.state_heads == 1
    with pytest.raises(EngineError, match=r"built for .*smollm3.*but this server runs .*num_layers.*foreign's config"):
        engine.adapter(foreign)
    fresh = Engine.load(EngineOptions(model=model, adapter=None, device="cpu"))
    assert engine.fingerprint == fresh.fingerprint  # the same fresh adapter as a plain start

    # a compatible one swaps in, and back
    loaded = engine.adapter(tsw)
    assert (
        engine.adapter(tsw) is loaded and loaded.fingerprint["adapter_sha256"] != engine.fingerprint["adapter_sha256"]
    )
    prompt = engine.tokenizer.encode("def f(x):\n", add_special_tokens=False)
    states = {"conventions": torch.randn(2, 1, 8, 8) * 0.5}
    engine.memory.load_states(states)
    plain_text = engine.generate(prompt, max_new_tokens=8).text
    engine.use(loaded)
    assert engine.fingerprint is loaded.fingerprint
    reference = Engine.load(EngineOptions(model=model, adapter=tsw.name, device="cpu"))
    reference.memory.load_states(states)
    assert engine.generate(prompt, max_new_tokens=8).text == reference.generate(prompt, max_new_tokens=8).text
    engine.use(engine.adapter(None))
    assert engine.generate(prompt, max_new_tokens=8).text == plain_text


def test_the_server_writes_with_a_segment_write_adapter(model_dirs, tmp_path):
    from dmem_lsp.runtime.assist import write_memory
    from tests.tiny_models import load_tiny_model

    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig(write="segment"))
    strengthen(mem, seed=4)
    engine = Engine.load(
        EngineOptions(
            model=str(model_dirs["qwen3"]), adapter=str(memory.save_adapter(mem, tmp_path / "ssw")), device="cpu"
        )
    )
    ids = token_ids(1, 12, seed=5)
    states = write_memory(engine, "edits", ids[0].tolist())
    mem.reset()
    with torch.no_grad(), mem.writing(store="edits", segments=torch.zeros_like(ids)):  # one segment: the whole pass
        mem.model(input_ids=ids)
    assert states["edits"].any() and torch.equal(states["edits"], mem.states()["edits"])
    assert not states["conventions"].any()


def test_a_model_saved_without_its_tokenizer_is_refused_naming_it(model_dirs, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(model_dirs["qwen3"], bare)
    for name in (
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "chat_template.jinja",
    ):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(EngineError, match="no usable tokenizer") as caught:
        Engine.load(EngineOptions(model=str(bare), adapter=None, device="cpu"))
    assert str(bare) in str(caught.value)


def test_threads_are_set_on_the_thread_that_loads(model_dirs):
    """The server loads on its inference worker, which then runs every job: the count set
    there is the one generation runs with."""
    from dmem_lsp.runtime.worker import Priority, Worker

    worker = Worker()
    try:
        options = EngineOptions(model=str(model_dirs["qwen3"]), adapter=None, device="cpu", threads=3)
        worker.submit(lambda stop: Engine.load(options), priority=Priority.LOAD).future.result(timeout=120)
        assert (
            worker.submit(lambda stop: torch.get_num_threads(), priority=Priority.REQUEST).future.result(timeout=60)
            == 3
        )
    finally:
        worker.close()
    with pytest.raises(ValueError, match="threads"):
        EngineOptions(threads=0)


def test_completions_take_the_prompt_shape_the_adapter_records(model_dirs, tmp_path):
    import shutil

    from dmem_lsp.runtime.assist import complete
    from dmem_lsp.runtime.prompts import completion_prompt
    from dmem_lsp.runtime.settings import CompletionSettings
    from dmem_lsp.workspace.config import AdapterSource
    from tests.tiny_models import load_tiny_model, save_tiny_tokenizer

    mem = memory.attach(load_tiny_model(model_dirs["qwen3"]), memory.DeltaMemConfig())
    strengthen(mem, seed=6)
    chat = memory.save_adapter(mem, tmp_path / "chat", extra={"prompt": "chat"})
    fim = memory.save_adapter(mem, tmp_path / "fim", extra={"prompt": "fim"})
    plain = memory.save_adapter(mem, tmp_path / "plain")
    model = str(model_dirs["qwen3"])
    engine = Engine.load(EngineOptions(model=model, adapter=str(chat), device="cpu"))
    assert engine.active.prompt == "chat"
    settings = CompletionSettings(max_tokens=6)
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"

    def generated(shape):
        ids = completion_prompt(engine.tokenizer, prefix, suffix, settings.prefix_tokens, settings.suffix_tokens, shape)
        return engine.generate(ids.input_ids, max_new_tokens=6, stop=["\n"]).text

    assert generated("chat") != generated("fim"), "the two shapes must be told apart by their output"
    assert complete(engine, prefix, suffix, settings).text == generated("chat")
    engine.use(engine.adapter(AdapterSource(str(plain))))  # no record: the tokenizer's FIM tokens decide
    assert engine.active.prompt is None
    assert complete(engine, prefix, suffix, settings).text == generated("fim")

    no_fim = tmp_path / "no-fim"
    shutil.copytree(model_dirs["qwen3"], no_fim)
    save_tiny_tokenizer(no_fim, fim=False)
    with pytest.raises(EngineError, match="trained on fill-in-the-middle prompts, but this model's tokenizer has no"):
        Engine.load(EngineOptions(model=str(no_fim), adapter=str(fim), device="cpu"))
