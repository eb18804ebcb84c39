"""δ-mem attached to real (tiny) Hugging Face models: full precision and bitsandbytes NF4."""

from __future__ import annotations

import pytest
import torch
import transformers

import memory
from tests.memory.helpers import strengthen, token_ids
from tests.tiny_models import ARCHITECTURES, load_tiny_model


@pytest.mark.parametrize("nf4", [False, True], ids=["fp32", "nf4"])
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zero_state_logits_are_bit_identical(model_dirs, architecture, nf4):
    model = load_tiny_model(model_dirs[architecture], nf4=nf4)
    if nf4:
        assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    ids = token_ids(2, 19)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        base_first = model(input_ids=ids[:1, :1]).logits
        mem = memory.attach(model, memory.DeltaMemConfig())
        strengthen(mem)  # even strong weights add nothing while every state is zero
        attached = model(input_ids=ids).logits
        assert torch.equal(attached, base)
        with mem.writing(store="edits"):  # the first token of a write pass reads S = 0 too
            written = model(input_ids=ids[:1, :1]).logits
        assert torch.equal(written, base_first)
        # and memory does reach the output once something has been written
        changed = model(input_ids=ids).logits
    assert not torch.allclose(changed, base, atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_init_reads_the_base_projections(model_dirs, architecture):
    model = load_tiny_model(model_dirs[architecture], nf4=True)
    mem = memory.attach(model, memory.DeltaMemConfig(rank=4, state_heads=2))
    layer, block = mem.layers[1], model.model.layers[1].self_attn
    import bitsandbytes.functional as bnbf

    weight = block.q_proj.base_layer.weight
    q_base = bnbf.dequantize_4bit(weight.data, weight.quant_state).float()
    expected = torch.nn.functional.normalize(q_base[:, :4], dim=0) * 0.05
    assert torch.allclose(layer.delta_q_proj[:, :4], expected, atol=1e-7)
    assert torch.equal(layer.delta_q_proj[:, 4:], torch.zeros_like(layer.delta_q_proj[:, 4:]))
    assert torch.equal(layer.beta_proj, torch.zeros_like(layer.beta_proj))
    assert torch.equal(layer.beta_bias, torch.full_like(layer.beta_bias, -1.5))
    assert layer.delta_o_proj.shape == (64, 8) and layer.memory_k_proj.shape == (8, 64)


@pytest.mark.parametrize(
    "architecture, nf4", [("qwen3", False), ("llama", False), ("smollm3", False), ("qwen3", True)],
    ids=["qwen3", "llama", "smollm3", "qwen3-nf4"],
)
def test_greedy_generate_with_cache_equals_full_forwards(model_dirs, architecture, nf4):
    model = load_tiny_model(model_dirs[architecture], nf4=nf4)
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    with torch.no_grad():
        with mem.writing(store="conventions"):
            model(input_ids=token_ids(1, 40, seed=5))
        assert mem.states()["conventions"].abs().max() > 0
        prompt = token_ids(1, 9, seed=6)
        generated = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
        sequence = prompt
        for _ in range(12):
            logits = model(input_ids=sequence, use_cache=False).logits[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        base_model = load_tiny_model(model_dirs[architecture], nf4=nf4)
        base = base_model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False, pad_token_id=0
        )
    assert torch.equal(generated, sequence)
    assert not torch.equal(generated, base), "the memory should change what is generated"


def test_token_by_token_writes_with_the_kv_cache_equal_one_write(model_dirs):
    """Writing while decoding (one-token forwards on the cache) is the same as one long write."""
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    ids = token_ids(1, 16, seed=8)
    with torch.no_grad(), mem.writing(store="debug"):
        whole = model(input_ids=ids).logits
        at_once = mem.states()["debug"]
        mem.reset()
        out = model(input_ids=ids[:, :6], use_cache=True)
        pieces, cache = [out.logits], out.cache
        for t in range(6, 16):
            out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.cache
    assert torch.allclose(mem.states()["debug"], at_once, atol=1e-5)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-4)


def test_read_only_passes_change_no_store(model_dirs):
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    with torch.no_grad():
        for store, seed in (("conventions", 1), ("debug", 2), ("edits", 3)):
            with mem.writing(store=store):
                model(input_ids=token_ids(1, 20, seed=seed))
        before = mem.states()
        model(input_ids=token_ids(2, 30, seed=4))
        model.generate(token_ids(1, 5), max_new_tokens=4, do_sample=False, pad_token_id=0)
    after = mem.states()
    assert all(torch.equal(before[name], after[name]) for name in mem.stores)


def test_a_write_changes_only_its_store(model_dirs):
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    with torch.no_grad():
        with mem.writing(store="debug"):
            model(input_ids=token_ids(1, 25, seed=1))
        before = mem.states()
        with mem.writing(store="edits"):
            model(input_ids=token_ids(1, 25, seed=2))
    after = mem.states()
    assert torch.equal(before["debug"], after["debug"])
    assert torch.equal(before["conventions"], after["conventions"])
    assert not torch.equal(before["edits"], after["edits"])
    mem.reset("edits")
    assert torch.equal(mem.states()["edits"], torch.zeros_like(after["edits"]))
    assert torch.equal(mem.states()["debug"], after["debug"])


def test_one_store_is_the_papers_model(model_dirs, monkeypatch):
    """One store: a TSW write is the naive per-token rule; reads of several stores are sums."""
    ids_write, ids_read = token_ids(1, 33, seed=1), token_ids(1, 17, seed=2)

    def run(kernel=None, **config):
        model = load_tiny_model(model_dirs["qwen3"])
        mem = memory.attach(model, memory.DeltaMemConfig(**config))
        strengthen(mem)
        if kernel is not None:
            monkeypatch.setattr("memory.passes.delta_rule_chunked", kernel)
        with torch.no_grad():
            with mem.writing(store=mem.stores[0]):
                write_logits = model(input_ids=ids_write).logits
            read_logits = model(input_ids=ids_read).logits
        monkeypatch.undo()
        return mem, write_logits, read_logits

    def naive(q, k, v, beta, S0, log_lam, chunk_size):
        return memory.delta_rule_naive(q, k, v, beta, S0, log_lam=log_lam)

    fast = run(stores=("memory",))
    oracle = run(naive, stores=("memory",))
    assert torch.allclose(fast[1], oracle[1], atol=1e-5) and torch.allclose(fast[2], oracle[2], atol=1e-5)
    assert torch.allclose(fast[0].states()["memory"], oracle[0].states()["memory"], atol=1e-5)

    # three stores, the same write into the first: the same model as the paper's
    mem3, write3, read3 = run()
    assert torch.equal(write3, fast[1]) and torch.equal(read3, fast[2])

    # reads sum over stores: S_a in one store and S_b in another read as S_a + S_b in one
    model = mem3.model
    S_a = mem3.states()["conventions"]
    S_b = S_a.flip(-1) * 0.5
    mem3.load_states({"conventions": S_a, "edits": S_b})
    with torch.no_grad():
        two_stores = model(input_ids=ids_read).logits
        mem3.reset()
        mem3.load_states({"debug": S_a + S_b})
        one_store = model(input_ids=ids_read).logits
    assert torch.allclose(two_stores, one_store, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_writes_equal_unpadded_writes(model_dirs, side):
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    lengths = (14, 9, 20)
    sequences = [token_ids(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    with torch.no_grad():
        for seq in sequences:
            with mem.writing(store="edits"):
                model(input_ids=seq[None])
        sequential = mem.states()["edits"]
        mem.reset()
        width = max(lengths)
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros(len(lengths), width, dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, span], mask[row, span] = seq, 1
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with mem.writing(store="edits"):
            model(input_ids=ids, attention_mask=mask, position_ids=positions)
    batched = mem.states()["edits"]
    assert batched.abs().max() > 0
    assert torch.allclose(batched, sequential, rtol=1e-5, atol=1e-5)


def test_segment_writes(model_dirs):
    """SSW: reads see the state from before the pass; each segment is one write of its mean x."""
    model = load_tiny_model(model_dirs["llama"])
    mem = memory.attach(model, memory.DeltaMemConfig(write="segment"))
    strengthen(mem)
    ids = token_ids(1, 15, seed=3)
    segments = torch.tensor([[0, 0, 0, 1, 1, -1, 2, 2, 2, 2, -1, -1, 1, 3, 3]])
    inputs = {}
    hooks = [
        block.self_attn.q_proj.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i, block in enumerate(model.model.layers)
    ]
    with torch.no_grad():
        with mem.writing(store="conventions", segments=torch.zeros(1, 8, dtype=torch.long)):
            model(input_ids=token_ids(1, 8, seed=4))
        before = mem.states()["conventions"]
        read_logits = model(input_ids=ids).logits
        with mem.writing(store="conventions", segments=segments):
            write_logits = model(input_ids=ids).logits
    for hook in hooks:
        hook.remove()
    assert torch.equal(write_logits, read_logits)  # reads during the pass: the old state
    after = mem.states()["conventions"]
    for i, layer in enumerate(mem.layers):
        x = inputs[i][0]  # [T, H], the same in the read pass and in the write pass
        means = torch.stack([x[segments[0] == s].mean(0) for s in range(4)])[None]
        _, k, v, beta, log_lam = layer.project(means)
        _, S = memory.delta_rule_naive(torch.zeros_like(k), k, v, beta, before[i][None], log_lam=log_lam)
        assert torch.allclose(after[i], S[0], atol=1e-5)


def test_multi_state_heads(model_dirs, monkeypatch):
    model = load_tiny_model(model_dirs["mistral"])
    ids = token_ids(1, 21)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        mem = memory.attach(model, memory.DeltaMemConfig(rank=4, state_heads=3))
        strengthen(mem)
        assert torch.equal(model(input_ids=ids).logits, base)
        with mem.writing(store="debug"):
            model(input_ids=ids)
        fast = mem.states()["debug"]
        mem.reset()
        monkeypatch.setattr(
            "memory.passes.delta_rule_chunked",
            lambda q, k, v, beta, S0, log_lam, chunk_size: memory.delta_rule_naive(q, k, v, beta, S0, log_lam),
        )
        with mem.writing(store="debug"):
            model(input_ids=ids)
    assert fast.shape == (2, 3, 4, 4)
    assert torch.allclose(mem.states()["debug"], fast, atol=1e-5)
    assert mem.num_trainable_parameters() == 2 * (4 * 12 * 64 + 12 + 64 * 12 + 64 * 12)


def test_bf16_model_keeps_float32_state(model_dirs):
    model = load_tiny_model(model_dirs["qwen2"], dtype=torch.bfloat16)
    mem = memory.attach(model, memory.DeltaMemConfig())
    strengthen(mem)
    with torch.no_grad(), mem.writing(store="edits"):
        logits = model(input_ids=token_ids(1, 12)).logits
    assert logits.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in mem.states().values())
    assert mem.states()["edits"].abs().max() > 0


def test_detach_restores_the_base_model(model_dirs):
    model = load_tiny_model(model_dirs["qwen3"])
    ids = token_ids(1, 10)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        mem = memory.attach(model, memory.DeltaMemConfig())
        strengthen(mem)
        with mem.writing(store="edits"):
            model(input_ids=ids)
        with pytest.raises(memory.AttachError, match="already attached"):
            memory.attach(model, memory.DeltaMemConfig())
        mem.detach()
        assert torch.equal(model(input_ids=ids).logits, base)
        assert not any("delta_mem" in name for name, _ in model.named_parameters())


def test_errors_are_clear(model_dirs):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(memory.AttachError, match="q_proj"):
        memory.attach(gpt2, memory.DeltaMemConfig())
    model = load_tiny_model(model_dirs["qwen3"])
    mem = memory.attach(model, memory.DeltaMemConfig())
    with pytest.raises(ValueError, match="unknown memory store 'notes'"):
        with mem.writing(store="notes"):
            pass
    with pytest.raises(ValueError, match="shape"):
        mem.load_states({"edits": torch.zeros(3, 1, 8, 8)})
    with pytest.raises(ValueError, match="segments"):
        with torch.no_grad(), mem.writing(store="edits", segments=torch.zeros(1, 4, dtype=torch.long)):
            model(input_ids=token_ids(1, 5))
    with pytest.raises(ValueError, match="DeltaMemConfig.rank"):
        memory.DeltaMemConfig(rank=0)
    with pytest.raises(ValueError, match="DeltaMemConfig.write"):
        memory.DeltaMemConfig(write="sentence")


def test_eager_and_sdpa_attention_read_the_same_memory(model_dirs):
    """The model's own attention code runs unchanged, whichever implementation it uses."""
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_dirs["qwen2"], attn_implementation=implementation
        ).eval()
        mem = memory.attach(model, memory.DeltaMemConfig())
        strengthen(mem)
        with torch.no_grad():
            with mem.writing(store="edits"):
                model(input_ids=token_ids(1, 20, seed=1))
            logits[implementation] = model(input_ids=token_ids(1, 12, seed=2)).logits
        assert model.config._attn_implementation == implementation
    assert torch.allclose(logits["eager"], logits["sdpa"], atol=1e-4)
