"""What the language server adds to a completion, what a huge document and busy cores
cost it, and (on CUDA) what δ-mem costs and saves.

Part 1, always: a tiny model (built and saved to a temp dir, loaded by the server as a
user's model is) serves the same inline completion ``--requests`` times over stdio; after
each round trip the engine, loaded in this process, generates the same completion
directly. Both are timed side by side; the script prints p50/p95 of each and of the
server's own overhead (round trip minus direct generation, per pair). Target: p95
overhead under 10 ms.

Document size, always: one server per size (``--sizes``, default 10 KB, 1 MB and 16 MB),
each with an open document of that size whose last 8 KB are the same (so every prompt, and
every completion, is the same); completions at the document's end go to the servers in
turn, ``--size-requests`` per seed and server. Prints p50/p95 per size, the ratio of each
p50 to the 10 KB one (target: within 1.2x) and each server's peak RSS (VmHWM).

Threads under load, always: one busy process per core, and two servers, one with torch's
default thread count and one with the ``threads`` setting's automatic choice, take
``--busy-max-tokens`` completions in turn; p50/p95 of each and their ratio.

Part 2, when torch sees CUDA (skipped, saying so, otherwise): a random-weight model of
Qwen3-4B's shape, saved and loaded in NF4 through the engine, with ``--history`` tokens of
history (default 8192 and 32768): first-token latency, decoding tokens/s and peak GPU
memory for the vanilla backbone with the history in its context, against δ-mem with the
history written to memory and only the query in the prompt.

    .venv/bin/python benchmarks/lsp_latency.py [--requests 60] [--max-tokens 16] [--seeds 0 1 2]
    .venv/bin/python benchmarks/lsp_latency.py --parts sizes threads
    .venv/bin/python benchmarks/lsp_latency.py --gpu-only --history 8192 32768
    .venv/bin/python benchmarks/lsp_latency.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from dmem_lsp.runtime import assist  # noqa: E402
from dmem_lsp.runtime.engine import Engine, EngineOptions  # noqa: E402
from dmem_lsp.runtime.settings import CompletionSettings, cpu_cores, torch_threads  # noqa: E402
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
        server.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": source.as_uri(), "languageId": "python", "version": 1, "text": SOURCE}},
        )
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
    print(
        f"  LSP round trip     p50 {percentile(via_server, 0.5) * ms:7.2f} ms   "
        f"p95 {percentile(via_server, 0.95) * ms:7.2f} ms"
    )
    print(
        f"  engine directly    p50 {percentile(direct, 0.5) * ms:7.2f} ms   p95 {percentile(direct, 0.95) * ms:7.2f} ms"
    )
    print(
        f"  server overhead    p50 {percentile(overhead, .5) * ms:7.2f} ms   "
        f"p95 {percentile(overhead, .95) * ms:7.2f} ms   (target: p95 < 10 ms)   round trip / direct at p50: "
        f"{percentile(via_server, .5) / percentile(direct, .5):.2f}x"
    )


# -- document size and threads ----------------------------------------------------------

NAMES = ["total", "items", "path", "value", "config", "result", "index", "buffer", "name", "count"]
TAIL_BYTES = 8192
END = "def add(a, b):\n    return "


def code_lines(rng: random.Random, size: int) -> str:
    """About ``size`` characters of plausible Python, drawn with ``rng``."""
    out, length = [], 0
    while length < size:
        a, b, c = (rng.choice(NAMES) for _ in range(3))
        line = rng.choice([
            f"    {a} = {b}.get({c!r}, {rng.randint(0, 999)})\n",
            f"def {a}_{b}(self, {c}):\n",
            f"    for {a} in range(len({b})):\n        {c} += {a}\n",
            f"    return {a} + {b} * {c}\n",
            f"class {a.title()}{b.title()}:\n    {c}: int = {rng.randint(0, 99)}\n\n",
            f"    # {a} {b} {c}\n",
        ])
        out.append(line)
        length += len(line)
    return "".join(out)


def document(size: int, seed: int) -> str:
    """``size`` characters of code ending in the same ``TAIL_BYTES`` for every size of a seed."""
    tail = code_lines(random.Random(seed), TAIL_BYTES) + END
    filler = max(0, size - len(tail))
    return code_lines(random.Random(seed + 10_000), filler)[:filler] + tail


def end_of(text: str) -> dict[str, int]:
    return {"line": text.count("\n"), "character": len(text) - text.rfind("\n") - 1}


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: Path, data: Path, options: dict, args: list[str] = (), env: dict | None = None) -> RawServer:
    server = RawServer(["--model", str(model), "--adapter", "none", "--device", "cpu", *args], env or server_env(data))
    server.request(0, "initialize", {"capabilities": {}, "initializationOptions": options, "processId": None})
    server.response(0)
    server.notify("initialized", {})
    return server


def wait_ready(server: RawServer) -> None:
    status = server.wait_for(lambda m: m.get("method") == "dmem/status" and m["params"]["state"] != "loading")[0]
    assert status["params"]["state"] == "ready", status


def take_turns(
    servers: list[RawServer], params: list[dict], requests: int, first_id: int
) -> tuple[list[list[float]], list[set[str]]]:
    """Seconds per completion for each server, and the completions each gave; the servers are
    asked in turn (who goes first rotates) and the first round, a warm-up, is not counted."""
    times: list[list[float]] = [[] for _ in servers]
    texts: list[set[str]] = [set() for _ in servers]
    request = first_id
    for round_ in range(requests + 1):
        order = list(range(len(servers)))
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for i in order:
            request += 1
            start = time.perf_counter()
            servers[i].request(request, "textDocument/inlineCompletion", params[i])
            reply = servers[i].response(request)
            elapsed = time.perf_counter() - start
            assert "error" not in reply, reply
            texts[i].add(reply["result"]["items"][0]["insertText"] if reply["result"] else "")
            if round_:
                times[i].append(elapsed)
    return times, texts


def _size(size: int) -> str:
    return f"{size / 2**20:g} MB" if size >= 2**20 else f"{size / 1024:g} KB"


def document_sizes(sizes: list[int], seeds: list[int], requests: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_talkative_model(tmp / "model")
        options = {"completion": {"maxTokens": max_tokens, "debounceMs": 0}}
        servers = [start_server(model, tmp / f"data{size}", options, ["--threads", "1"]) for size in sizes]
        for server in servers:
            wait_ready(server)
        times: list[list[float]] = [[] for _ in sizes]
        per_seed: list[list[float]] = [[] for _ in sizes]
        for seed in seeds:
            params = []
            for size, server in zip(sizes, servers, strict=True):
                text = document(size, seed)
                uri = (tmp / f"seed{seed}-{size}.py").as_uri()
                item = {"uri": uri, "languageId": "python", "version": 1, "text": text}
                server.notify("textDocument/didOpen", {"textDocument": item})
                params.append({"textDocument": {"uri": uri}, "position": end_of(text), "context": {"triggerKind": 1}})
            seed_times, texts = take_turns(servers, params, requests, first_id=seed * 100_000)
            assert all(t == texts[0] for t in texts), f"seed {seed}: the same prompt gave different completions {texts}"
            for i, values in enumerate(seed_times):
                times[i].extend(values)
                per_seed[i].append(percentile(values, 0.5))
            for server, param in zip(servers, params, strict=True):
                server.notify("textDocument/didClose", {"textDocument": {"uri": param["textDocument"]["uri"]}})
        peaks = [peak_rss_mib(server.process.pid) for server in servers]
        for server in servers:
            server.close()

    ms = 1000
    base = percentile(times[0], 0.5)
    print(
        f"\ncompletion at the end of an open document, tiny model, {max_tokens} new tokens, 1 thread, "
        f"seeds {', '.join(map(str, seeds))}, {requests} requests per seed and size, the servers in turn"
    )
    print(
        f"  {'document':>10} {'p50 ms':>9} {'p95 ms':>9} {'p50 / first':>12}  "
        f"{'p50 per seed ms':<24} {'peak RSS MiB':>12}"
    )
    for size, values, seeded, peak in zip(sizes, times, per_seed, peaks, strict=True):
        print(
            f"  {_size(size):>10} {percentile(values, .5) * ms:>9.1f} {percentile(values, .95) * ms:>9.1f} "
            f"{percentile(values, .5) / base:>11.2f}x  {', '.join(f'{v * ms:.1f}' for v in seeded):<24} {peak:>12.0f}"
        )
    worst = max(percentile(values, 0.5) for values in times) / base
    print(
        f"  largest p50 / {_size(sizes[0])} p50: {worst:.2f}x (target ≤ 1.20x: {'met' if worst <= 1.2 else 'NOT met'})"
    )


def torch_default_threads() -> int:
    """What torch picks in a fresh process without OMP_NUM_THREADS."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    command = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    return int(subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout.strip())


def busy_cores(requests: int, max_tokens: int) -> None:
    cores = cpu_cores()
    default = torch_default_threads()
    saved = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        policy, why = torch_threads(0)
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved
    busy: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_talkative_model(tmp / "model")
        source = tmp / "settings.py"
        source.write_text(SOURCE)
        options = {"completion": {"maxTokens": max_tokens, "debounceMs": 0}}
        env = {key: value for key, value in server_env(tmp / "data").items() if key != "OMP_NUM_THREADS"}
        servers = [start_server(model, tmp / "data", options, ["--threads", str(n)], env) for n in (default, policy)]
        item = {"uri": source.as_uri(), "languageId": "python", "version": 1, "text": SOURCE}
        try:
            for server in servers:
                wait_ready(server)
                server.notify("textDocument/didOpen", {"textDocument": item})
            busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
            params = {"textDocument": {"uri": source.as_uri()}, "position": POSITION, "context": {"triggerKind": 1}}
            times, texts = take_turns(servers, [params, params], requests, first_id=0)
            assert texts[0] == texts[1], texts
        finally:
            for process in busy:
                process.kill()
                process.wait()
            for server in servers:
                server.close()

    ms = 1000
    print(
        f"\n{cores} busy processes on {cores} cores, tiny model, {max_tokens} new tokens, "
        f"{requests} requests each, in turn"
    )
    for label, n, values in (("torch's default", default, times[0]), (f"threads auto ({why})", policy, times[1])):
        name = f"{label}, {n} thread(s)"
        print(f"  {name:<44} p50 {percentile(values, .5) * ms:8.1f} ms   p95 {percentile(values, .95) * ms:8.1f} ms")
    print(
        f"  default / auto: p50 {percentile(times[0], .5) / percentile(times[1], .5):.2f}x, "
        f"p95 {percentile(times[0], .95) / percentile(times[1], .95):.2f}x"
        + ("  (the same thread count here: nothing to compare)" if default == policy else "")
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

    print(
        f"\n{engine.model.config.num_hidden_layers} layers, query {query} tokens, {new_tokens} new tokens, on {device}"
    )
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
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10 * 1024, 2**20, 16 * 2**20], help="document sizes, bytes"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size-requests", type=int, default=10, help="completions per seed and document size")
    parser.add_argument("--busy-requests", type=int, default=20)
    parser.add_argument("--busy-max-tokens", type=int, default=64)
    parser.add_argument("--history", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--query", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU parts")
    parser.add_argument(
        "--parts", nargs="+", choices=("overhead", "sizes", "threads"), default=["overhead", "sizes", "threads"],
        help="the CPU parts to run (default all)",
    )
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="run part 2 on the CPU with a tiny model (checks the script, not a figure)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="few requests, small documents: checks the script, not a figure"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        args.requests, args.size_requests, args.busy_requests, args.busy_max_tokens = 3, 2, 2, 4
        args.sizes, args.seeds = [10 * 1024, 200 * 1024], [0]
    if not args.gpu_only:
        if "overhead" in args.parts:
            server_overhead(args.requests, args.max_tokens, args.threads)
        if "sizes" in args.parts:
            document_sizes(args.sizes, args.seeds, args.size_requests, args.max_tokens)
        if "threads" in args.parts:
            busy_cores(args.busy_requests, args.busy_max_tokens)

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
        model = save_random_model(
            Path(tmp) / "qwen3-4b-shape", shape, torch.bfloat16 if device == "cuda" else torch.float32
        )
        engine = Engine.load(EngineOptions(model=str(model), adapter=None, device=device, quantization=quantization))
    with torch.no_grad():  # an adapter whose writes and reads are not negligible
        for name, param in engine.memory.named_parameters():
            if "beta" not in name:
                param.normal_(0, 0.02)
    history_comparison(engine, args.history, args.query, args.new_tokens)
    print(json.dumps({"device": device, "quantization": quantization}))


if __name__ == "__main__":
    main()
