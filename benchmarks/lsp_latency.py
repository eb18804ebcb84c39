"""What the language server adds to a completion, and (on CUDA) what δ-mem costs and saves.

Part 1, always: a tiny model (built and saved to a temp dir, loaded by the server as a
user's model is) serves the same inline completion ``--requests`` times over stdio; after
each round trip the engine, loaded in this process, generates the same completion
directly. Both are timed side by side; the script prints p50/p95 of each and of the
server's own overhead (round trip minus direct generation, per pair). Target: p95
overhead under 10 ms.

Part 2, when torch sees CUDA (skipped, saying so, otherwise): a random-weight model of
Qwen3-4B's shape, saved and loaded in NF4 through the engine, with ``--history`` tokens of
history (default 8192 and 32768): first-token latency, decoding tokens/s and peak GPU
memory for the vanilla backbone with the history in its context, against δ-mem with the
history written to memory and only the query in the prompt.

    .venv/bin/python benchmarks/lsp_latency.py [--requests 60] [--max-tokens 16]
    .venv/bin/python benchmarks/lsp_latency.py --gpu-only --history 8192 32768
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dmem_lsp import assist  # noqa: E402
from dmem_lsp.engine import Engine, EngineOptions  # noqa: E402
from dmem_lsp.settings import CompletionSettings  # noqa: E402
from tests.dmem_lsp.lsp import RawServer, server_env  # noqa: E402
from tests.tiny_models import save_talkative_model, save_tiny_tokenizer  # noqa: E402

SOURCE = "import os\n\ndef add(a, b):\n    return a + b\n\nclass Settings:\n    path = os.getcwd()\n"
POSITION = {"line": 3, "character": 11}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def server_overhead(requests: int, max_tokens: int, threads: int) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_talkative_model(tmp / "model")
        source = tmp / "settings.py"
        source.write_text(SOURCE)
        env = {**server_env(tmp / "data"), "OMP_NUM_THREADS": str(threads)}
        server = RawServer(["--model", str(model), "--adapter", "none", "--device", "cpu"], env)
        options = {"completion": {"maxTokens": max_tokens, "debounceMs": 0}}
        server.request(0, "initialize", {"capabilities": {}, "initializationOptions": options, "processId": None})
        server.response(0)
        server.notify("initialized", {})
        server.notify("textDocument/didOpen", {"textDocument": {"uri": source.as_uri(), "languageId": "python", "version": 1, "text": SOURCE}})
        status = server.wait_for(lambda m: m.get("method") == "dmem/status" and m["params"]["state"] != "loading")[0]
        assert status["params"]["state"] == "ready", status
        engine = Engine.load(EngineOptions(model=str(model), adapter=None, device="cpu"))
        settings = CompletionSettings(max_tokens=max_tokens, debounce_ms=0)
        offset = sum(len(line) for line in SOURCE.splitlines(True)[: POSITION["line"]]) + POSITION["character"]
        params = {"textDocument": {"uri": source.as_uri()}, "position": POSITION, "context": {"triggerKind": 1}}

        via_server, direct, overhead = [], [], []
        for i in range(1, requests + 3):
            start = time.perf_counter()
            server.request(i, "textDocument/inlineCompletion", params)
            reply = server.response(i)
            served = time.perf_counter() - start
            start = time.perf_counter()
            answer = assist.complete(engine, SOURCE[:offset], SOURCE[offset:], settings)
            generated = time.perf_counter() - start
            assert reply["result"]["items"][0]["insertText"] == answer.text
            if i > 2:  # the first two warm both sides up
                via_server.append(served)
                direct.append(generated)
                overhead.append(served - generated)
        server.close()

    ms = 1000
    print(f"tiny model, {max_tokens} new tokens, {requests} requests, {threads} thread(s)")
    print(f"  LSP round trip     p50 {percentile(via_server, .5) * ms:7.2f} ms   p95 {percentile(via_server, .95) * ms:7.2f} ms")
    print(f"  engine directly    p50 {percentile(direct, .5) * ms:7.2f} ms   p95 {percentile(direct, .95) * ms:7.2f} ms")
    print(
        f"  server overhead    p50 {percentile(overhead, .5) * ms:7.2f} ms   p95 {percentile(overhead, .95) * ms:7.2f} ms"
        f"   (target: p95 < 10 ms)   round trip / direct at p50: {percentile(via_server, .5) / percentile(direct, .5):.2f}x"
    )


# -- part 2: CUDA -----------------------------------------------------------------------

QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, rope_theta=1_000_000.0,
    tie_word_embeddings=True, rms_norm_eps=1e-6,
)


def save_random_model(directory: Path, shape: dict, dtype: torch.dtype) -> Path:
    import transformers

    save_tiny_tokenizer(directory)  # token ids are drawn at random; the tokenizer only has to load
    config = transformers.Qwen3Config(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    del model
    return directory


def timed_generation(engine: Engine, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, tokens/s over the rest), greedy with the KV cache."""
    device = engine.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        sync()
        start = time.perf_counter()
        out = engine.model(input_ids=prompt.to(device), use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        sync()
        first = time.perf_counter() - start
        cache = out.cache
        start = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = engine.model(input_ids=token, cache=cache, use_cache=True)
            cache = out.cache
            token = out.logits[:, -1:].argmax(-1)
        sync()
        rate = (new_tokens - 1) / (time.perf_counter() - start)
    return first, rate


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def history_comparison(engine: Engine, histories: list[int], query: int, new_tokens: int) -> None:
    """Vanilla with the history in context against δ-mem with the history in memory."""
    device, vocab = engine.device, engine.model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    rows = []
    for history in histories:
        past = torch.randint(3, vocab, (1, history), generator=generator)
        ask = torch.randint(3, vocab, (1, query), generator=generator)

        engine.memory.reset()
        peak_reset(device)
        with torch.inference_mode():
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            start = time.perf_counter()
            with engine.memory.writing(store="edits"):
                engine.model(input_ids=past.to(device), use_cache=False)
            sync()
            write = time.perf_counter() - start
        first, rate = timed_generation(engine, ask, new_tokens)
        rows.append((history, "δ-mem, history in memory", first, rate, peak_gib(device), write))

        engine.memory.reset()  # zero state: the read path is skipped, the backbone runs as is
        peak_reset(device)
        first, rate = timed_generation(engine, torch.cat([past, ask], dim=1), new_tokens)
        rows.append((history, "vanilla, history in context", first, rate, peak_gib(device), float("nan")))

    print(f"\n{engine.model.config.num_hidden_layers} layers, query {query} tokens, {new_tokens} new tokens, on {device}")
    print(f"  {'history':>8}  {'setting':<28} {'first token':>12} {'tokens/s':>9} {'peak GiB':>9} {'write s':>8}")
    for history, name, first, rate, peak, write in rows:
        print(f"  {history:>8}  {name:<28} {first * 1000:>9.1f} ms {rate:>9.1f} {peak:>9.2f} {write:>8.2f}")
    for history in histories:
        memory_row, vanilla_row = [r for r in rows if r[0] == history]
        print(
            f"  {history:>8}  first token vanilla/δ-mem {vanilla_row[2] / memory_row[2]:.2f}x, "
            f"tokens/s δ-mem/vanilla {memory_row[3] / vanilla_row[3]:.2f}x, "
            f"peak memory vanilla/δ-mem {vanilla_row[4] / memory_row[4]:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--history", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--query", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gpu-only", action="store_true", help="skip part 1")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run part 2 on the CPU with a tiny model (checks the script, not a figure)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.gpu_only:
        server_overhead(args.requests, args.max_tokens, args.threads)

    if args.cpu_smoke:
        shape, device, quantization = dict(QWEN3_4B, vocab_size=320, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16), "cpu", "none"
    elif torch.cuda.is_available():
        shape, device, quantization = QWEN3_4B, "cuda", "nf4"
    else:
        print("\npart 2 skipped: torch sees no CUDA device (first-token latency, tokens/s and GPU memory need one)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = save_random_model(Path(tmp) / "qwen3-4b-shape", shape, torch.bfloat16 if device == "cuda" else torch.float32)
        engine = Engine.load(EngineOptions(model=str(model), adapter=None, device=device, quantization=quantization))
    with torch.no_grad():  # an adapter whose writes and reads are not negligible
        for name, param in engine.memory.named_parameters():
            if "beta" not in name:
                param.normal_(0, 0.02)
    history_comparison(engine, args.history, args.query, args.new_tokens)
    print(json.dumps({"device": device, "quantization": quantization}))


if __name__ == "__main__":
    main()
