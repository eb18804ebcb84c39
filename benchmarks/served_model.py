"""The served recall recipe: a tiny backbone that reads the server's prompts, and its δ-mem adapters.

``build_model(out, seed, quick=False)`` writes, reproducibly for a seed (and thread count):

- ``out/backbone``: a tiny Qwen3 and the task's tokenizer with FIM tokens (``save_pretrained``
  both; ``dmem-lsp --model out/backbone`` loads it offline and builds FIM prompts);
- ``out/backbone-chat``: the same weights, the tokenizer with the FIM tokens renamed, so the
  server builds chat-template prompts (until contract 1's ``prompt`` field picks the shape);
- ``out/adapter-msw`` (and ``out/adapter-ssw`` unless quick): δ-mem adapters in our format.

1. The backbone stands in for a pretrained model, so it must read the server's prompts: it
   trains with the history *in context*, inside the prompt the server's own code builds
   (``dmem_lsp.runtime.prompts.completion_prompt`` over the history's text, then the document before
   the cursor; FIM and chat alike), mixed with plain lookup drills (the history, then answered
   ``<key> = <value>`` lines), with the next-token loss, until (c), the value at the cursor
   with the history in the prompt, reaches 0.95 on validation workspaces in both shapes.
   Then it is frozen (and checked bit-identical after the adapters train).
2. Each adapter trains with ``memory.training.train`` (the product's trainer) on episodes
   whose history is the texts the server writes (``served_task.framed``, one piece per write
   event, chunked as the server chunks) and whose query is the server's prompt for the cursor
   in the query document, with the history absent; target: the value, then end-of-sequence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import served_task as task

log = logging.getLogger("served_model")

HIDDEN, LAYERS, HEADS = 64, 4, 4
PREFIX_TOKENS, SUFFIX_TOKENS = 1536, 512
"""The server's default prompt budgets (``completion.prefixTokens`` / ``suffixTokens``)."""
WRITE_CHUNK_TOKENS = 256
"""The server's default ``memory.writeChunkTokens``: each write pass is at most this many tokens."""
SHAPES = ("fim", "chat")


@dataclass(frozen=True)
class Recipe:
    max_k: int = 16
    backbone_steps: int = 3000
    backbone_batch: int = 24
    backbone_lr: float = 3e-3
    backbone_schedule: str = "cosine"
    """``constant`` after the warm-up, or ``cosine``: down to a tenth of ``backbone_lr`` at ``backbone_steps``."""
    hidden: int = HIDDEN
    heads: int = HEADS
    layers: int = LAYERS
    target_c: float = 0.95
    backbone_seconds: float | None = None
    """Stop the backbone's training after this long whatever its (c) (a loaded machine's budget;
    the result records the (c) reached)."""
    drill_share: float = 0.75
    """The share of each backbone batch that is lookup drills (the rest: the server's prompts)."""
    few_families: bool = True
    """Backbone histories draw their keys from few families (``served_task.make_workspace``)."""
    drill_asks: int = 8
    """A drill asks every fact once, then this many times K more facts at random."""
    drill_format: str = "plain"
    """``plain``: the asks are ``<key> = <value>`` lines, like the history's own; ``marked``: each
    ask is ``?<key> = <value>`` closed by end-of-sequence, after a leading end-of-sequence
    (``recall.py``'s ``ask <key> = <value> <eos>``), so an ask never looks like a history line."""
    lookup_first: float | None = None
    """Before the mixture, train on marked drills alone (``lookup_batch`` rows a step) until the
    raw lookup (the history, then ``?<key> =``) answers this share of the validation's binding
    queries; None: no such phase. Without it the backbone learns to copy a value of the key's
    family and never the lookup by key (see ``in_context_scores``)."""
    lookup_batch: int = 32
    lookup_asks: int = 4
    lookup_max_steps: int | None = None
    """A lookup phase that has not bound by this step ends its attempt (None: no bound)."""
    backbone_attempts: int = 1
    """Backbones tried, each from its own init and data (``attempt_seed``), until one's lookup
    binds within ``lookup_max_steps``. Whether the lookup forms depends on the init: seed 1's
    stayed at chance for 1800 steps while seed 1's data from another init bound by step 500."""
    adapter_episodes: tuple[tuple[int, int], ...] = ((4, 3000), (8, 6000), (16, 9000))
    """Stages of adapter training: (largest K, episodes), one ``train`` call each."""
    adapter_lr: float = 2e-3
    variants: tuple[str, ...] = ("msw", "ssw")


QUICK = Recipe(max_k=4, backbone_steps=3000, adapter_episodes=((2, 3000), (4, 13000), (4, 16000)),
               adapter_lr=6e-3,
               variants=("msw",))
"""``workspace_recall.py --quick`` (the demo's recipe until ``QUICK_LOOKUP``): K <= 4, about 30 min of
backbone and 40 min of adapter on one idle CPU thread; its backbone never learns the lookup by key."""

QUICK_LOOKUP = dataclasses.replace(QUICK, lookup_first=0.9, drill_format="marked", drill_asks=4, drill_share=0.25,
                                   few_families=False, backbone_lr=2e-3, backbone_schedule="constant",
                                   backbone_steps=4000, lookup_max_steps=1200, backbone_attempts=3)
"""QUICK with the lookup phase first (``workspace_recall.py --recipe quick-lookup``; the demo's recipe,
``scripts/make-demo-model``): marked drills
alone at ``recall.py``'s learning rate and batch until the raw lookup binds, then a quarter
marked drills and three quarters the server's prompts. A lookup that has not bound by step 1200
starts over from another init, three tries at most. Seed 0 reached (c) 0.95 FIM / 0.93 chat
(binding queries 0.91 / 0.82) by step 1200, in about 8 minutes of one thread."""

RECIPES = {"full": Recipe(), "quick": QUICK, "quick-lookup": QUICK_LOOKUP}


def tokenizers(out: Path, seed: int) -> dict[str, Any]:
    return {
        "fim": task.save_tokenizer(out / "backbone", True, seed),
        "chat": task.save_tokenizer(out / "backbone-chat", False, seed),
    }


def prompt_ids(tokenizer: Any, prefix: str, suffix: str) -> list[int]:
    """The server's completion prompt (its shape follows the tokenizer: SEAM for contract 1's
    ``shape=``, which will let one tokenizer build both)."""
    from dmem_lsp.runtime.prompts import completion_prompt

    return completion_prompt(tokenizer, prefix, suffix, PREFIX_TOKENS, SUFFIX_TOKENS).input_ids


def in_context(tokenizer: Any, ws: task.Workspace, query: task.Query) -> list[int]:
    """(c)'s prompt: the texts the server writes, then the query document, as one document."""
    return prompt_ids(tokenizer, "\n".join(task.framed(ws)) + "\n" + query.prefix, query.suffix)


def random_workspace(rng: random.Random, max_k: int, few_families: bool = False) -> task.Workspace:
    return task.make_workspace(rng.choice(task.SOURCES), rng.randint(1, max_k), rng, few_families=few_families)


def value_id(tokenizer: Any, value: str) -> int:
    ids = tokenizer.encode(" " + value, add_special_tokens=False)
    assert len(ids) == 1, f"{value!r} is {len(ids)} tokens"
    return ids[0]


# ----------------------------------------------------------------------------- the backbone


def build_backbone(vocab: int, seed: int, hidden: int = HIDDEN, heads: int = HEADS, layers: int = LAYERS) -> Any:
    import torch
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads, max_position_embeddings=2048,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=2,
    )
    torch.manual_seed(seed)
    return transformers.Qwen3ForCausalLM(config).float()


def drill(tokenizer: Any, ws: task.Workspace, rng: random.Random, asks: int = 3) -> tuple[list[int], list[int]]:
    """The history's text, then every fact asked and answered: many lookups in one sequence."""
    asked = [*ws.facts, *(rng.choice(ws.facts) for _ in range(asks * len(ws.facts)))]
    text = "\n".join(task.framed(ws)) + "\n" + "".join(f"{k} = {v}\n" for k, v in asked)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids, [1] * len(ids)


def marked_drill(tokenizer: Any, ws: task.Workspace, rng: random.Random, asks: int = 3) -> tuple[list[int], list[int]]:
    """``drill`` with every ask marked (``Recipe.drill_format``): end-of-sequence, the history's
    text, then ``?<key> = <value>`` and end-of-sequence for every ask."""
    asked = [*ws.facts, *(rng.choice(ws.facts) for _ in range(asks * len(ws.facts)))]
    ids = [tokenizer.eos_token_id, *tokenizer.encode("\n".join(task.framed(ws)) + "\n", add_special_tokens=False)]
    for key, value in asked:
        ids += [*tokenizer.encode(f"?{key} = {value}", add_special_tokens=False), tokenizer.eos_token_id]
    return ids, [1] * len(ids)


def raw_lookup_binding(model: Any, tokenizer: Any, workspaces: Sequence[task.Workspace]) -> float | None:
    """The marked drill's own question on the binding queries: end-of-sequence, the history's
    text, ``?<key> =``; the share whose greedy next token is the value."""
    import torch

    right = total = 0
    with torch.no_grad():
        for ws in workspaces:
            history = [tokenizer.eos_token_id, *tokenizer.encode("\n".join(task.framed(ws)) + "\n",
                                                                 add_special_tokens=False)]
            for query in (q for q in ws.queries if q.key in task.binding(ws)):
                ids = torch.tensor([[*history, *tokenizer.encode(f"?{query.key} =", add_special_tokens=False)]])
                predicted = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].argmax().item()
                right += predicted == value_id(tokenizer, query.value)
                total += 1
    return right / total if total else None


def prompted(tokenizer: Any, ws: task.Workspace, rng: random.Random) -> tuple[list[int], list[int]]:
    query = rng.choice(ws.queries)
    ids = [*in_context(tokenizer, ws, query), value_id(tokenizer, query.value), tokenizer.eos_token_id]
    weights = [1] * len(ids)
    weights[-2] = 8  # the answer: one token in a long prompt
    return ids, weights


def batch_loss(model: Any, rows: Sequence[tuple[list[int], list[int]]]) -> Any:
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    weights = torch.zeros(len(rows), width)
    for i, (row, weight) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        weights[i, : len(row)] = torch.tensor(weight, dtype=torch.float)
    logits = model(input_ids=ids, attention_mask=(weights > 0).long(), use_cache=False).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    return (loss * w).sum() / w.sum()


def validation_set(seed: int, max_k: int, n: int = 48) -> list[task.Workspace]:
    rng = random.Random(seed * 7919 + 1)
    return [task.make_workspace(task.SOURCES[i % 3], 1 + i % max_k, rng) for i in range(n)]


def in_context_scores(model: Any, toks: dict[str, Any],
                      workspaces: Sequence[task.Workspace]) -> dict[str, dict[str, float | None]]:
    """(c) per shape, on all queries and on the binding ones (``served_task.binding``): a backbone
    that matches only the key's family answers those at chance while ``all`` still looks good."""
    import torch

    scores: dict[str, dict[str, float | None]] = {}
    with torch.no_grad():
        for shape, tokenizer in toks.items():
            right = {"all": [0, 0], "binding": [0, 0]}
            for ws in workspaces:
                bound = task.binding(ws)
                for query in ws.queries:
                    ids = torch.tensor([in_context(tokenizer, ws, query)])
                    predicted = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].argmax().item()
                    hit = predicted == value_id(tokenizer, query.value)
                    for cell in ("all", "binding") if query.key in bound else ("all",):
                        right[cell][0] += hit
                        right[cell][1] += 1
            scores[shape] = {cell: (r / n if n else None) for cell, (r, n) in right.items()}
    return scores


def attempt_seed(seed: int, attempt: int) -> int:
    """The init and data seed of a seed's ``attempt``-th backbone (the first is the seed's own)."""
    return seed + 1000 * attempt


def train_backbone(model: Any, toks: dict[str, Any], recipe: Recipe, seed: int, attempt: int = 0) -> dict[str, Any]:
    """Train ``model`` (built from ``attempt_seed(seed, attempt)``) on the recipe's drills and prompts;
    validation is the seed's whatever the attempt. ``bound`` is False when the lookup phase ran
    out of ``lookup_max_steps`` (the attempt is over, nothing else trained)."""
    import torch

    rng = random.Random(attempt_seed(seed, attempt))
    torch.manual_seed(attempt_seed(seed, attempt))
    validation = validation_set(seed, recipe.max_k)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.backbone_lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = 50
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.backbone_schedule == "cosine":
            done = min(1.0, (step - warmup) / max(1, recipe.backbone_steps - warmup))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * done))
        return 1.0

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start, curve, scores, binding = time.perf_counter(), [], {}, {}
    lookup_phase, lookup_steps, bound = recipe.lookup_first is not None, None, True
    drill_rows = marked_drill if recipe.drill_format == "marked" else drill
    for step in range(1, recipe.backbone_steps + 1):
        model.train()
        k_max = min(recipe.max_k, 1 + step // 40)  # short histories first
        rows = []
        if lookup_phase:
            for i in range(recipe.lookup_batch):
                ws = random_workspace(rng, k_max, recipe.few_families)
                rows.append(marked_drill(toks[SHAPES[i % 2]], ws, rng, recipe.lookup_asks))
        else:
            drills = round(recipe.drill_share * recipe.backbone_batch)
            for i in range(recipe.backbone_batch):
                ws = random_workspace(rng, k_max, recipe.few_families)
                tokenizer = toks[SHAPES[i % 2]]
                rows.append(drill_rows(tokenizer, ws, rng, recipe.drill_asks) if i < drills
                            else prompted(tokenizer, ws, rng))
        loss = batch_loss(model, rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if lookup_phase and step % 100 == 0:
            model.eval()
            raw = raw_lookup_binding(model, toks["fim"], validation)
            curve.append((step, round(loss.item(), 4), {"raw_lookup_binding": raw}))
            log.info("backbone step %d (lookup phase): loss %.3f, the raw lookup on binding queries %s (%.0fs)", step,
                     loss.item(), _rounded({"fim": raw})["fim"], time.perf_counter() - start)
            if raw is not None and raw >= recipe.lookup_first and k_max >= recipe.max_k:
                lookup_phase, lookup_steps = False, step
            elif recipe.lookup_max_steps is not None and step >= recipe.lookup_max_steps:
                log.info("backbone: the lookup did not bind by step %d; this attempt ends", step)
                bound = False
                break
        elif step % 100 == 0 and k_max >= recipe.max_k:
            model.eval()
            detail = in_context_scores(model, toks, validation)
            scores = {shape: cells["all"] for shape, cells in detail.items()}
            binding = {shape: cells["binding"] for shape, cells in detail.items()}
            curve.append((step, round(loss.item(), 4), scores, binding))
            log.info("backbone step %d: loss %.3f, (c) on validation %s, on binding queries %s (%.0fs)", step,
                     loss.item(), _rounded(scores), _rounded(binding), time.perf_counter() - start)
            if min(scores.values()) >= recipe.target_c:
                break
        if recipe.backbone_seconds is not None and time.perf_counter() - start > recipe.backbone_seconds:
            model.eval()
            detail = in_context_scores(model, toks, validation)
            scores = {shape: cells["all"] for shape, cells in detail.items()}
            binding = {shape: cells["binding"] for shape, cells in detail.items()}
            curve.append((step, round(loss.item(), 4), scores, binding))
            log.info("backbone: out of time at step %d, (c) on validation %s, on binding queries %s", step,
                     _rounded(scores), _rounded(binding))
            break
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return {"steps": step, "attempt": attempt, "bound": bound, "lookup_steps": lookup_steps,
            "validation_c": scores, "validation_c_binding": binding, "curve": curve,
            "seconds": round(time.perf_counter() - start, 1)}


def _rounded(scores: dict[str, float | None]) -> dict[str, float | None]:
    return {shape: None if value is None else round(value, 3) for shape, value in scores.items()}


# ----------------------------------------------------------------------------- the adapters


VARIANTS = {"msw": {"rank": 8, "write": "token", "state_heads": 4}, "ssw": {"rank": 8, "write": "segment"}}


def episode(toks: dict[str, Any], ws: task.Workspace, query: task.Query, shape: str) -> Any:
    """History as the server writes it (one piece per write event, into its source's store), the
    server's prompt as the query."""
    from memory.episodes import Episode

    tokenizer = toks[shape]
    history = tuple(tuple(tokenizer.encode(text, add_special_tokens=False)) for text in task.framed(ws))
    query_ids = tuple(prompt_ids(tokenizer, query.prefix, query.suffix))
    target = (value_id(tokenizer, query.value), tokenizer.eos_token_id)
    stores = (ws.source,) * len(history)  # the store the server writes this source into
    return Episode(history, query_ids, target, source=ws.source, stores=stores)


def episodes(toks: dict[str, Any], rng: random.Random, n: int, max_k: int) -> list[Any]:
    out = []
    while len(out) < n:
        ws = random_workspace(rng, max_k)
        for query in ws.queries[:2]:
            out.append(episode(toks, ws, query, rng.choice(SHAPES)))
    return out[:n]


def train_options(episodes_n: int, lr: float, seed: int) -> Any:
    """SEAM (contract 3): ``TrainOptions.rows/warmup_steps/schedule`` when the trainer branch lands
    them (16 rows a step, cosine); until then one episode a step, the product's default."""
    from memory.training import TrainOptions

    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    if {"rows", "warmup_steps", "schedule"} <= fields:
        rows = 16
        steps = max(1, episodes_n // rows)
        return TrainOptions(steps=steps, rows=rows, warmup_steps=50, schedule="cosine", lr=lr, seed=seed,
                            write_chunk_tokens=WRITE_CHUNK_TOKENS, eval_every=steps, progress=False)
    return TrainOptions(steps=episodes_n, lr=lr, seed=seed, write_chunk_tokens=WRITE_CHUNK_TOKENS,
                        eval_every=episodes_n, progress=False)


def train_adapter(out: Path, variant: str, toks: dict[str, Any], recipe: Recipe, seed: int) -> dict[str, Any]:
    import torch
    import transformers

    import memory
    from memory.training import train

    model = transformers.AutoModelForCausalLM.from_pretrained(out / "backbone", dtype=torch.float32).eval()
    torch.manual_seed(seed)
    mem = memory.attach(model, memory.DeltaMemConfig(**VARIANTS[variant]))
    rng = random.Random(seed * 31 + len(variant))
    held_out = episodes(toks, random.Random(seed * 31 + 7), 24, recipe.max_k)
    start, stages = time.perf_counter(), []
    for k_max, n in recipe.adapter_episodes:
        summary = train(mem, episodes(toks, rng, n, k_max), held_out, train_options(n, recipe.adapter_lr, seed),
                        output=out / f"adapter-{variant}", base_model_id=str(out / "backbone"), data="served_task")
        stages.append({"max_k": k_max, "episodes": n, "eval_loss_memory": summary["eval_loss_memory"],
                       "eval_loss_no_memory": summary["eval_loss_no_memory"]})
        log.info("%s: K <= %d, %d episodes: held-out loss %.3f with memory, %.3f without (%.0fs)", variant, k_max, n,
                 summary["eval_loss_memory"], summary["eval_loss_no_memory"], time.perf_counter() - start)
    return {"stages": stages, "seconds": round(time.perf_counter() - start, 1)}


def weights_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def build_model(out: Path, seed: int, quick: bool = False, recipe: Recipe | None = None) -> dict[str, Any]:
    """Contract 4: write ``out/backbone`` (+ ``backbone-chat``) and ``out/adapter-<variant>``; returns
    what was done (the backbone's (c), the adapters' losses, seconds, the backbone's sha256)."""
    recipe = recipe or (QUICK if quick else Recipe())
    out = Path(out)
    toks = tokenizers(out, seed)
    tried = []
    for attempt in range(recipe.backbone_attempts):
        model = build_backbone(len(toks["fim"]), attempt_seed(seed, attempt), recipe.hidden, recipe.heads,
                               recipe.layers)
        result = train_backbone(model, toks, recipe, seed, attempt)
        if result["bound"]:
            break
        tried.append({key: result[key] for key in ("attempt", "steps", "curve", "seconds")})
    else:
        raise RuntimeError(f"seed {seed}: the lookup did not bind within {recipe.lookup_max_steps} steps in "
                           f"{recipe.backbone_attempts} attempts (raw lookup curves: {[t['curve'] for t in tried]})")
    info: dict[str, Any] = {"recipe": dataclasses.asdict(recipe), "backbone": result, "unbound_attempts": tried}
    model.save_pretrained(out / "backbone")
    model.save_pretrained(out / "backbone-chat")
    frozen = weights_sha256(out / "backbone")
    info["adapters"] = {variant: train_adapter(out, variant, toks, recipe, seed) for variant in recipe.variants}
    if weights_sha256(out / "backbone") != frozen:
        raise RuntimeError("the backbone changed while the adapters trained")
    info["backbone_sha256"] = frozen
    return info


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    import torch

    torch.set_num_threads(args.threads)
    print(json.dumps(build_model(args.out, args.seed, args.quick), indent=1))
