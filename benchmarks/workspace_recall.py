"""Recall through the product: workspaces on disk, the real ``dmem-lsp``, completions over LSP.

For a seed: ``served_model.build_model`` makes the backbone (trained on the server's prompts
with the history in context until (c) ≥ 0.95, then frozen) and its adapters; then, for each
prompt shape (FIM: ``--model backbone``; chat: ``--model backbone-chat``, the same weights
with the FIM tokens renamed) and adapter, this script

1. lays out workspaces (``served_task``: K facts among distractors in a README.md, in a
   document's change, or in debugging steps; K = 1, 2, 4, 8, 16; a twin workspace per
   workspace with the same keys and other values), starts ``dmem-lsp`` as a subprocess with a
   home of its own (``XDG_DATA_HOME``, offline), opens every workspace folder, sends the edits
   (``didOpen`` + ``didChange``) and the debugging steps (``dmem.rememberDebugStep``), and
   waits for every write (the ``dmem/memory`` ``written`` events; the tokens each reports
   must be the tokens of ``served_task.framed``'s text, or the run stops);
2. asks ``textDocument/completion`` at the cursor of every query document and scores the
   first word of the completion against the value: (b);
3. restarts the server on the same home and asks ``textDocument/inlineCompletion`` at the
   same cursors: (b′), identical predictions; then ``dmem.resetMemory`` and asks again: reset;
4. controls, each a server of its own: no memory (``memory.enabled`` false, nothing written),
   another adapter (``--adapter none``: a fresh one, writes and all), and, from step 2, each
   twin's answers scored against its twin's values (another workspace's values).

Re-run (progress on stderr, the table in markdown on stdout, ``--out`` writes
``workspace_recall.md`` and ``.json``):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/workspace_recall.py [--seeds 0 1 2] [--quick] [--out DIR]
        [--recipe full|quick|quick-lookup]   # served_model.RECIPES; quick-lookup: the lookup phase first
        [--workdir DIR]   # keep the models and workspaces there (default: a temporary directory);
                          # models already built there (build.json) are reused
        [--shapes fim chat] [--set FIELD=JSON ...]   # prompt shapes; served_model.Recipe overrides

``--recipe quick-lookup --seeds 0 1 2 --per-k 8`` (K <= 4, MSW) is what README's table comes from:
about an hour a seed to build on one thread of a loaded 2-core machine (most of it the adapter),
then about 4 minutes to serve.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import served_task as task

from dmem_lsp.lsp.framing import Frame, FrameParser
from dmem_lsp.lsp.reader import CHUNK

log = logging.getLogger("workspace_recall")

TIMEOUT = float(os.environ.get("WORKSPACE_RECALL_TIMEOUT", "300"))
"""Seconds for any one wait on the server (it imports torch, loads the model, writes)."""
KS = (1, 2, 4, 8, 16)
QUICK_KS = (1, 2, 4)


# ----------------------------------------------------------------------------- an LSP client over pipes


class Server:
    """``dmem-lsp`` in a subprocess; JSON-RPC over its pipes; server requests answered."""

    def __init__(self, args: Sequence[str], home: Path, options: dict[str, Any], folders: Sequence[Path]) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "XDG_DATA_HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"), "TOKENIZERS_PARALLELISM": "false"}
        self.log_path = home / f"server-{time.monotonic_ns()}.log"
        home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dmem_lsp", *args, "--log-file", str(self.log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {
            "processId": os.getpid(), "rootUri": folders[0].as_uri(), "initializationOptions": options,
            "capabilities": {"textDocument": {"completion": {}}, "window": {"workDoneProgress": True}},
            "workspaceFolders": [{"uri": f.as_uri(), "name": f.name} for f in folders],
        })
        self.notify("initialized", {})

    def _read(self) -> None:
        """The server's messages onto ``messages`` (the server's own frame reader), then None at its end."""
        stdout, parser = self.process.stdout, FrameParser()
        while data := stdout.read1(CHUNK):
            for event in parser.feed(data):
                if isinstance(event, Frame):
                    self.messages.put(json.loads(event.body))
        self.messages.put(None)

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def _pump(self, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            try:
                message = self.messages.get(timeout=TIMEOUT)
            except queue.Empty:
                raise TimeoutError(f"dmem-lsp said nothing for {TIMEOUT} s; the last memory events: "
                                   f"{self.events[-4:]}; its log: {self.log_path}") from None
            if message is None:
                raise RuntimeError(f"dmem-lsp ended (exit {self.process.wait()}); its log: {self.log_path}")
            method = message.get("method")
            if method == "dmem/memory":
                self.events.append(message["params"])
            elif method == "dmem/status":
                self.statuses.append(message["params"])
                if message["params"].get("state") == "error":
                    raise RuntimeError(f"dmem-lsp failed to load: {message['params'].get('message')}")
            elif method is not None and "id" in message:  # workDoneProgress/create, configuration, showDocument
                result = [None] if "configuration" in method else None
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": result})
            if until(message):
                return message

    def request(self, method: str, params: Any) -> Any:
        self.next_id += 1
        id_ = self.next_id
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        reply = self._pump(lambda m: m.get("id") == id_ and "method" not in m)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def wait_event(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first ``dmem/memory`` event that matches, received already or still to come."""
        for event in self.events:
            if match(event):
                return event
        return self._pump(lambda m: m.get("method") == "dmem/memory" and match(m["params"]))["params"]

    def close(self) -> None:
        try:
            self.request("shutdown", None)
            self.notify("exit", None)
            self.process.wait(timeout=120)
        finally:
            if self.process.poll() is None:
                self.process.kill()


# ----------------------------------------------------------------------------- one server session


@dataclass
class Layout:
    """The workspaces of one measurement, on disk: main ones and their twins."""

    root: Path
    workspaces: list[tuple[str, task.Workspace]]
    """(folder name, workspace), twins included."""
    twin_of: dict[str, str] = field(default_factory=dict)
    """twin folder -> the folder whose keys it shares."""

    def folder(self, name: str) -> Path:
        return self.root / name


def make_layout(root: Path, seed: int, ks: Sequence[int], per_k: int) -> Layout:
    rng = random.Random(seed * 1_000_003 + 17)
    layout = Layout(root, [])
    for source in task.SOURCES:
        for k in ks:
            for i in range(per_k):
                name = f"{source}-k{k}-{i}"
                ws = task.make_workspace(source, k, rng)
                twin = task.make_workspace(source, k, rng, keys=[key for key, _ in ws.facts])
                layout.workspaces += [(name, ws), (name + "-twin", twin)]
                layout.twin_of[name + "-twin"] = name
    for name, ws in layout.workspaces:
        task.lay_out(ws, root / name)
    return layout


def options(memory_enabled: bool = True) -> dict[str, Any]:
    return {"completion": {"maxTokens": 4, "debounceMs": 0},
            "memory": {"enabled": memory_enabled, "editDebounceMs": 50, "saveDebounceMs": 100}}


def write_all(server: Server, layout: Layout, tokenizer: Any) -> None:
    """Send the edits and debugging steps; wait until every workspace's facts are written, and
    check each write's token count against the framing the adapter trained on."""
    for name, ws in layout.workspaces:
        folder = layout.folder(name)
        if ws.source == "edits":
            uri = (folder / task.EDITED_FILE).as_uri()
            server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "plaintext", "version": 1,
                                                                     "text": ws.edit[0]}})
            server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                                      "contentChanges": [{"text": ws.edit[1]}]})
        elif ws.source == "debug":
            uri = (folder / task.NOTES_FILE).as_uri()
            for step in ws.steps:
                arguments = [{"uri": uri, "text": step, "kind": "note"}]
                done = server.request("workspace/executeCommand", {"command": "dmem.rememberDebugStep",
                                                                   "arguments": arguments})
                if not done or not done.get("tokens"):
                    raise RuntimeError(f"{name}: the debugging step was not written: {done}")
    for name, ws in layout.workspaces:
        uri = layout.folder(name).as_uri().rstrip("/")
        texts = task.framed(ws)
        store = ws.source
        written = []
        for _ in texts:
            event = server.wait_event(lambda e, uri=uri, store=store, written=written: e.get("event") == "written"
                                      and e.get("folder", "").rstrip("/") == uri and e.get("store") == store
                                      and id(e) not in {id(w) for w in written})
            written.append(event)
        expected = [len(tokenizer.encode(text, add_special_tokens=False)) for text in texts]
        got = [event.get("written") for event in written]
        if got != expected:
            raise RuntimeError(f"{name}: the server wrote {got} tokens where served_task.framed gives {expected}: "
                               "the framing the adapter trained on is not the server's")


def ask_all(server: Server, layout: Layout, inline: bool) -> dict[str, list[str]]:
    """{folder: [the first word of the completion at each query's cursor]}."""
    answers: dict[str, list[str]] = {}
    for name, ws in layout.workspaces:
        words = []
        for query in ws.queries:
            uri = (layout.folder(name) / query.path).as_uri()
            server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                     "text": query.text}})
            lines = query.prefix.split("\n")
            position = {"line": len(lines) - 1, "character": len(lines[-1])}
            params = {"textDocument": {"uri": uri}, "position": position}
            if inline:
                result = server.request("textDocument/inlineCompletion", {**params, "context": {"triggerKind": 1}})
                text = result["items"][0]["insertText"] if result and result.get("items") else ""
            else:
                result = server.request("textDocument/completion", {**params, "context": {"triggerKind": 1}})
                text = result["items"][0]["textEdit"]["newText"] if result and result.get("items") else ""
            server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            words.append((text.split() or [""])[0])
        answers[name] = words
    return answers


def session(model: Path, adapter: str, home: Path, layout: Layout, tokenizer: Any, *, write: bool = True,
            memory_enabled: bool = True, inline: bool = False, reset_after: bool = False) -> dict[str, Any]:
    """One server: open every folder, (write), ask; optionally reset and ask again."""
    folders = [layout.folder(name) for name, _ in layout.workspaces]
    args = ["--model", str(model), "--adapter", adapter, "--device", "cpu", "--threads", "1"]
    start = time.perf_counter()
    server = Server(args, home, options(memory_enabled), folders)
    try:
        # a step sent, or a completion asked, before its folder is open has no memory to go to
        for name, _ in layout.workspaces:
            uri = layout.folder(name).as_uri().rstrip("/")
            server.wait_event(lambda e, uri=uri: e.get("event") == "opened" and e.get("folder", "").rstrip("/") == uri)
        if write:
            conventions = [
                layout.folder(n).as_uri().rstrip("/") for n, ws in layout.workspaces if ws.source == "conventions"
            ]
            for uri in conventions:  # written when the folder opens, as soon as the model is ready
                server.wait_event(
                    lambda e, uri=uri: e.get("event") == "written" and e.get("folder", "").rstrip("/") == uri
                )
            write_all(server, layout, tokenizer)
        out = {"answers": ask_all(server, layout, inline)}
        if reset_after:
            server.request("workspace/executeCommand", {"command": "dmem.resetMemory", "arguments": []})
            out["reset"] = ask_all(server, layout, inline)
    finally:
        server.close()
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


# ----------------------------------------------------------------------------- scores


@dataclass
class Cell:
    correct: int = 0
    total: int = 0
    chance_sum: float = 0.0

    def add(self, right: bool, key: str) -> None:
        self.correct += int(right)
        self.total += 1
        self.chance_sum += task.chance(key)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.correct / self.total if self.total else None,
                "chance": self.chance_sum / self.total if self.total else None, "queries": self.total}


def score(layout: Layout, answers: dict[str, list[str]], against_twin: bool = False) -> dict[str, dict[str, Any]]:
    """Cells "<source> K=<k>", "<source> re-assigned", "all"; twins are scored only ``against_twin``
    (their answers against the values of the workspace they share keys with)."""
    workspaces = dict(layout.workspaces)
    cells: dict[str, Cell] = {}
    for name, ws in layout.workspaces:
        if (name in layout.twin_of) != against_twin:
            continue
        truth = dict(workspaces[layout.twin_of[name]].facts) if against_twin else dict(ws.facts)
        for query, word in zip(ws.queries, answers[name], strict=True):
            right = word == truth[query.key]
            for cell in (f"{ws.source} K={len(ws.facts)}", "all", *((f"{ws.source} re-assigned",)
                                                                    if query.key in ws.reassigned else ())):
                cells.setdefault(cell, Cell()).add(right, query.key)
    return {name: cell.to_dict() for name, cell in sorted(cells.items())}


def same(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, int]:
    pairs = [(x, y) for name in a for x, y in zip(a[name], b[name], strict=True)]
    return {"identical": sum(x == y for x, y in pairs), "queries": len(pairs)}


# ----------------------------------------------------------------------------- one seed


def run_seed(seed: int, workdir: Path, ks: Sequence[int], per_k: int, recipe: Any,
             shapes: Sequence[str] = ("fim", "chat")) -> dict[str, Any]:
    """Build (or reuse, from ``workdir``) the seed's models with ``recipe``, then measure every shape
    and adapter through the server."""
    import served_model
    from transformers import AutoTokenizer

    models = workdir / f"seed{seed}" / "models"
    start = time.perf_counter()
    if (models / "build.json").exists():
        built = json.loads((models / "build.json").read_text())
        log.info("seed %d: reusing the models in %s", seed, models)
    else:
        built = served_model.build_model(models, seed, recipe=recipe)
        (models / "build.json").write_text(json.dumps(built, indent=1))
    result: dict[str, Any] = {"seed": seed, "build": built, "build_seconds": round(time.perf_counter() - start, 1)}
    for shape in shapes:
        model_dir = models / ("backbone" if shape == "fim" else "backbone-chat")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for variant in built["recipe"]["variants"]:
            adapter = str(models / f"adapter-{variant}")
            base = workdir / f"seed{seed}" / f"{shape}-{variant}"
            shutil.rmtree(base, ignore_errors=True)
            layout = make_layout(base / "workspaces", seed, ks, per_k)
            log.info("seed %d, %s, %s: writing and asking through dmem-lsp", seed, shape, variant)
            main = session(model_dir, adapter, base / "home", layout, tokenizer)
            log.info("seed %d, %s, %s: restarting", seed, shape, variant)
            again = session(
                model_dir, adapter, base / "home", layout, tokenizer, write=False, inline=True, reset_after=True
            )
            log.info("seed %d, %s, %s: controls", seed, shape, variant)
            none = session(model_dir, adapter, base / "home-none", layout, tokenizer, write=False, memory_enabled=False)
            other = session(model_dir, "none", base / "home-other", layout, tokenizer)
            row = {
                "b": score(layout, main["answers"]),
                "b_prime": same(main["answers"], again["answers"]),
                "reset": score(layout, again["reset"]),
                "reset_is_no_memory": same(again["reset"], none["answers"]),
                "no_memory": score(layout, none["answers"]),
                "other_workspace": score(layout, main["answers"], against_twin=True),
                "other_adapter": score(layout, other["answers"]),
                "answers": {"b": main["answers"], "b_prime": again["answers"], "reset": again["reset"],
                            "no_memory": none["answers"], "other_adapter": other["answers"]},
                "seconds": {"main": main["seconds"], "restart": again["seconds"], "no_memory": none["seconds"],
                            "other_adapter": other["seconds"]},
            }
            result[f"{shape}-{variant}"] = row
            log.info("seed %d, %s, %s: (b) %s", seed, shape, variant, row["b"]["all"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ----------------------------------------------------------------------------- the table


def fmt(cell: dict[str, Any] | None) -> str:
    return "—" if not cell or cell["accuracy"] is None else f"{cell['accuracy']:.2f}"


def table(results: Sequence[dict[str, Any]], ks: Sequence[int]) -> str:
    lines = []
    for r in results:
        backbone = r["build"]["backbone"]
        c = ", ".join(f"{shape} {value:.3f}" for shape, value in backbone["validation_c"].items())
        bound = ", ".join(f"{shape} {'—' if value is None else f'{value:.3f}'}"
                          for shape, value in backbone.get("validation_c_binding", {}).items())
        lines.append(f"- seed {r['seed']}: backbone {backbone['steps']} steps ({backbone['seconds']:.0f} s), (c) on "
                     f"validation workspaces: {c}" + (f" (binding queries: {bound})" if bound else "")
                     + f"; whole seed {r['seconds']:.0f} s")
    for key in [k for k in results[0] if "-" in k and isinstance(results[0][k], dict) and "b" in results[0][k]]:
        shape, variant = key.split("-")
        seeds = ", ".join(str(r["seed"]) for r in results)
        lines += [(f"\n**{shape.upper()} prompts, {variant.upper()}** (seeds {seeds};"
                   " each cell: per seed, then the minimum)\n"),
                  "| row | " + " | ".join(f"K={k}" for k in ks) + " | re-assigned | chance |",
                  "|---|" + "---|" * (len(ks) + 2)]
        measures = [("(b) memory, through the server", "b"), ("reset", "reset"), ("no memory", "no_memory"),
                    ("another workspace's values", "other_workspace"), ("another adapter (none)", "other_adapter")]
        for source in task.SOURCES:
            for label, name in measures:
                cells = []
                for k in ks:
                    values = [r[key][name].get(f"{source} K={k}") for r in results]
                    cells.append(_seeds(values))
                cells.append(_seeds([r[key][name].get(f"{source} re-assigned") for r in results]))
                chance = results[0][key][name].get("all", {}).get("chance")
                lines.append(f"| {source}: {label} | " + " | ".join(cells) + f" | {chance:.3f} |" if chance else "")
        same_counts = [f"{r[key]['b_prime']['identical']}/{r[key]['b_prime']['queries']}" for r in results]
        reset_counts = [f"{r[key]['reset_is_no_memory']['identical']}/{r[key]['reset_is_no_memory']['queries']}"
                        for r in results]
        lines.append(f"\n(b′) restart, inlineCompletion: predictions identical to (b) {', '.join(same_counts)}; "
                     f"after reset identical to no memory {', '.join(reset_counts)}.")
    return "\n".join(lines)


def _seeds(cells: Sequence[dict[str, Any] | None]) -> str:
    values = [c["accuracy"] for c in cells if c and c["accuracy"] is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return "/".join(f"{v:.2f}" for v in values) + f" (min {min(values):.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--quick", action="store_true", help="K = 1, 2, 4, the quick recipe: minutes, not a table to quote"
    )
    parser.add_argument("--recipe", choices=("full", "quick", "quick-lookup"),
                        help="served_model.RECIPES (default: quick with --quick, else full); quick-lookup: "
                        "the quick recipe with the lookup phase first (served_model.QUICK_LOOKUP)")
    parser.add_argument("--per-k", type=int, default=None, help="workspaces per source and K (default 8; quick 3)")
    parser.add_argument("--shapes", nargs="+", choices=("fim", "chat"), default=["fim", "chat"])
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                        help="override a field of the recipe (served_model.Recipe), e.g. backbone_seconds=600")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="where models and workspaces go (default: a temporary directory)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    quick = args.quick or args.recipe in ("quick", "quick-lookup")
    per_k = args.per_k or (3 if quick else 8)
    temporary = None
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="workspace-recall-")
        args.workdir = Path(temporary.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        import dataclasses

        import served_model

        recipe = served_model.RECIPES[args.recipe or ("quick" if args.quick else "full")]
        for assignment in args.set:
            name, _, value = assignment.partition("=")
            value = json.loads(value)
            value = tuple(map(tuple, value)) if name == "adapter_episodes" else value
            recipe = dataclasses.replace(recipe, **{name: value})
        ks = QUICK_KS if quick else KS
        results = [run_seed(seed, args.workdir, ks, per_k, recipe, args.shapes) for seed in args.seeds]
    finally:
        if temporary is not None:
            temporary.cleanup()
    text = table(results, QUICK_KS if quick else KS)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "workspace_recall.md").write_text(text + "\n")
        (args.out / "workspace_recall.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
