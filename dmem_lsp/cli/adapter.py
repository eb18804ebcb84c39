"""``dmem-lsp adapter train|info|export|import``: make, inspect and share δ-mem adapters.

- ``train``: episode training (``memory.training``) on chat conversations (JSONL) or on a
  git repository's history (``workspace_episodes``); saves the adapter in our format with a
  training summary, a loss curve and, if asked, resumable checkpoints. Runs under
  ``accelerate launch -m dmem_lsp adapter train ...`` on several GPUs as it is.
- ``info``: what an adapter is (config, backbone, parameters, sha256, training summary).
- ``export`` / ``import``: read an adapter in either format (ours, integrity-checked, or the
  official release's) and write it in ours, then read the copy back to check it.

The model and adapters are found as the server finds them (a directory, or a Hugging Face
id through the local cache). Nothing here imports torch until a command runs, so the
server's start-up stays fast. Errors are one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from dmem_lsp.runtime.settings import DEFAULT_MODEL

__all__ = ["add_parser", "run"]

log = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``adapter`` and its actions to the top-level subcommands."""
    actions = commands.add_parser("adapter", help="train, inspect and share δ-mem adapters").add_subparsers(
        dest="adapter_command", metavar="ACTION", required=True
    )
    train = actions.add_parser(
        "train",
        help="train an adapter on conversations or a git repository's history",
        description="Episode training: write the history into memory, then answer with it absent; "
        "only δ-mem's parameters train.",
    )
    train.add_argument("--model", dest="train_model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                       help="the backbone: Hugging Face id or local directory (default %(default)s)")
    train.add_argument("--adapter", dest="train_adapter", metavar="ID_OR_DIR",
                       help="start from this adapter (default: a fresh one, initialised from --seed)")
    data = train.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", metavar="FILE.jsonl", help='conversations, one {"messages": [...]} per line')
    data.add_argument("--workspace", dest="train_workspace", metavar="REPO",
                      help="episodes from this git repository's history")
    train.add_argument("--output", "-o", dest="train_output", required=True, metavar="DIR",
                       help="where the adapter, loss.csv, loss.png and checkpoints/ go")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=int, help="passes over the training episodes (default 1)")
    train.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default %(default)s)")
    train.add_argument("--grad-accum", type=int, default=1, metavar="N",
                       help="micro-steps (of --rows episodes each) per optimizer step (default 1)")
    train.add_argument("--rows", type=int, default=1, metavar="N",
                       help="independent episodes per micro-step, written and read together in one batch, each "
                            "with a state of its own (default %(default)s; more is faster where memory allows)")
    train.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                       help="the learning rate after warm-up (default %(default)s: decays to 0 at the last step)")
    train.add_argument("--warmup-steps", type=int, metavar="N",
                       help="steps of linear warm-up (default: 5%% of the steps, at most 100)")
    train.add_argument("--prompt", dest="train_prompt", choices=("fim", "chat"),
                       help="with --workspace: the completion prompt shape the episodes are asked in, recorded in "
                            "the adapter so the server builds the same (default: the starting adapter's, else FIM "
                            "when the tokenizer has the FIM tokens; use chat for an instruct model such as the "
                            "default). Conversations (--data) are always chat"),
    train.add_argument("--write-tokens", type=int, default=1024, metavar="N",
                       help="history tokens written per episode, the last ones kept (default %(default)s)")
    train.add_argument("--write-chunk-tokens", type=int, default=256, metavar="N",
                       help="write each history piece in passes of at most N tokens, as the server does with "
                            "memory.writeChunkTokens (default %(default)s; 0: the whole history in one pass)")
    train.add_argument("--seed", type=int, default=0, help="episode order, split and fresh adapter (default 0)")
    train.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="save a checkpoint every N steps")
    train.add_argument("--eval-every", type=int, metavar="N", help="held-out evaluation every N steps")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue from output/checkpoints/step-NNNNNN")
    train.add_argument("--eval-fraction", type=float, default=0.1, metavar="F",
                       help="episodes held out for evaluation (default %(default)s)")
    train.add_argument("--max-commits", type=int, default=200, metavar="N",
                       help="with --workspace: the most recent commits read (default %(default)s)")
    train.add_argument("--device", dest="train_device", choices=("auto", "cuda", "cpu"), default="auto",
                       help="default: CUDA when available (bf16 autocast), else the CPU")
    train.add_argument("--quantization", dest="train_quantization", choices=("nf4", "none"),
                       help="the backbone's weights (default: NF4 on CUDA, full precision on the CPU)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    info = actions.add_parser("info", help="config, backbone, parameters, sha256 and training summary")
    info.add_argument("path", metavar="ID_OR_DIR")
    info.add_argument("--json", action="store_true", help="print JSON")
    for name, verb in (("export", "write an adapter in dmem-lsp's format (integrity checked)"),
                       ("import", "read ours or the official release's format and write ours")):
        action = actions.add_parser(name, help=verb)
        action.add_argument("path", metavar="ID_OR_DIR")
        action.add_argument("--output", "-o", dest="convert_output", required=True, metavar="DIR")
        action.add_argument("--base-model", dest="base_model", metavar="ID",
                            help="record this backbone id (the official format does not name one)")


def run(args: argparse.Namespace) -> int:
    """Carry out ``dmem-lsp adapter ...``; every expected failure is one line on stderr."""
    import memory
    from dmem_lsp.runtime.engine import EngineError
    from memory.checkpoints import CheckpointError
    from memory.episodes import EpisodeError
    from memory.training import TrainingError

    expected = (memory.AdapterError, CheckpointError, EpisodeError, TrainingError, EngineError, ValueError, OSError)
    try:
        if args.adapter_command == "train":
            return _train(args)
        if args.adapter_command == "info":
            return _info(args.path, args.json)
        return _convert(args.path, Path(args.convert_output), args.base_model, args.adapter_command)
    except expected as error:
        log.debug("dmem-lsp adapter %s failed", args.adapter_command, exc_info=True)  # -vv: the traceback
        message = " ".join(str(error).split())
        print(f"dmem-lsp adapter {args.adapter_command}: {message}", file=sys.stderr)
        return 1


def _resolve(name: str, command: str) -> Path:
    from dmem_lsp.runtime.locations import resolve_local

    return Path(resolve_local(name, "adapter", f"dmem-lsp adapter {command}"))


def _train(args: argparse.Namespace) -> int:
    import torch

    import memory
    from dmem_lsp.cli.episodes import WorkspaceOptions, workspace_episodes
    from dmem_lsp.runtime.engine import Engine, EngineOptions
    from dmem_lsp.runtime.prompts import prompt_shape
    from memory.episodes import read_conversations, split_episodes
    from memory.training import TrainOptions, make_accelerator, train

    options = TrainOptions(
        steps=args.steps, epochs=args.epochs, lr=args.lr, grad_accum=args.grad_accum, write_tokens=args.write_tokens,
        write_chunk_tokens=args.write_chunk_tokens, seed=args.seed, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, progress=not args.no_progress, rows=args.rows, schedule=args.schedule,
        warmup_steps=args.warmup_steps or 0,
    )
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps {args.warmup_steps}: must not be negative")
    if args.data and not Path(args.data).is_file():
        raise ValueError(f"--data {args.data}: no such file")
    if args.resume and not Path(args.resume).is_dir():
        raise ValueError(f"--resume {args.resume}: no such checkpoint directory")
    if not 0.0 <= args.eval_fraction < 1.0:
        raise ValueError(f"--eval-fraction {args.eval_fraction}: must be at least 0 and below 1")
    accelerator = make_accelerator(args.train_device, options.grad_accum)
    start = args.resume or args.train_adapter  # resuming: the checkpoint's weights
    engine = Engine.load(
        EngineOptions(model=args.train_model, adapter=start, device=args.train_device,
                      quantization=args.train_quantization),
        progress=lambda stage: log.info("%s", stage),
        device=accelerator.device,
    )
    mem = engine.memory
    if start is None:  # a fresh adapter from --seed (the server's fresh one always uses seed 0)
        config = mem.config
        mem.detach()
        torch.manual_seed(args.seed)
        mem = memory.attach(engine.model, config)
    if args.data:
        if args.train_prompt == "fim":
            raise ValueError("--prompt fim needs --workspace: conversations (--data) are chat prompts")
        episodes = read_conversations(args.data, engine.tokenizer)
        source, shape = f"conversations {args.data}", "chat"
    else:
        shape = prompt_shape(engine.tokenizer, args.train_prompt or engine.active.prompt)
        workspace = WorkspaceOptions(max_commits=args.max_commits, prompt=shape)
        episodes = workspace_episodes(args.train_workspace, engine.tokenizer, workspace)
        source = f"workspace {Path(args.train_workspace).resolve()} (git history)"
    train_episodes, held_out = split_episodes(episodes, args.eval_fraction, args.seed)
    if args.warmup_steps is None:  # 5% of the run, at most 100 steps
        per_step = options.grad_accum * options.rows * accelerator.num_processes
        total = options.steps or (options.epochs or 1) * math.ceil(len(train_episodes) / per_step)
        options = dataclasses.replace(options, warmup_steps=min(100, total // 20))
    options = dataclasses.replace(options, prompt=shape)
    summary = train(
        mem, train_episodes, held_out, options, args.train_output, accelerator=accelerator, resume=args.resume,
        base_model_id=args.train_model, data=source, started_from=args.train_adapter,
    )
    if accelerator.is_main_process:
        losses = ""
        if summary["eval_loss_memory"] is not None:
            losses = (f"; held-out loss {summary['eval_loss_memory']:.4f} with memory, "
                      f"{summary['eval_loss_no_memory']:.4f} with the state zeroed")
        print(f"saved {args.train_output}: {summary['steps']} steps on {len(train_episodes)} episodes{losses}")
    return 0


def _describe(path: Path) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(config, tensors, report): everything ``info`` shows, read through ``read_adapter``'s checks."""
    from dmem_lsp.runtime.prompts import recorded_shape
    from memory.adapter_io import OFFICIAL_WEIGHTS_NAME, read_adapter
    from memory.backbone import shapes_of

    config, tensors, meta = read_adapter(path)
    official = meta.get("format") == "official"
    base = dict(meta.get("base_model") or {"id": None, "revision": None, "model_type": None, **shapes_of(tensors)})
    sha = meta.get("weights_sha256")
    if official:
        sha = hashlib.sha256((path / OFFICIAL_WEIGHTS_NAME).read_bytes()).hexdigest()
    report = {
        "path": str(path),
        "format": "official release" if official else f"dmem-lsp, version {meta['format_version']}",
        "delta_mem": config.to_dict(),
        "base_model": base,
        "parameters": sum(t.numel() for t in tensors.values()),
        "weights_sha256": sha,
        "training": meta.get("training"),
        "prompt": recorded_shape(meta)[0],
        "prompt_reason": recorded_shape(meta)[1],
    }
    return config, tensors, report


def _info(name: str, as_json: bool) -> int:
    _, _, report = _describe(_resolve(name, "info"))
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    config, base, training = report["delta_mem"], report["base_model"], report["training"]
    write = {"token": "token writes (TSW)", "segment": "segment writes (SSW)"}[config["write"]]
    heads = config["state_heads"]
    lines = [
        f"adapter     {report['path']} (format: {report['format']})",
        f"δ-mem       rank {config['rank']}, α {config['alpha']:g}, {heads} state head{'s' * (heads > 1)}, {write}",
        f"backbone    {base.get('id') or 'not recorded'}"
        + (f" ({base['model_type']})" if base.get("model_type") else "")
        + (f" revision {base['revision']}" if base.get("revision") else ""),
        f"shapes      hidden {base['hidden_size']}, {base['num_layers']} layers, "
        f"q_proj out {base['q_proj_out']}, o_proj out {base['o_proj_out']}",
        f"parameters  {report['parameters']:,}",
        f"sha256      {report['weights_sha256']}",
        f"prompt      {report['prompt'] or 'not recorded (the server decides by the tokenizer)'}: "
        f"{report['prompt_reason']}",
    ]
    if training:
        lines.append(
            f"training    {training['steps']} steps ({training['epochs']} epochs) on {training['data']}, "
            f"{training['episodes']['train']} episodes, {training['episodes']['held_out']} held out; "
            f"seed {training['seed']}, lr {training['lr']:g}, {training['date']}"
        )
        if training.get("eval_loss_memory") is not None:
            lines.append(
                f"            held-out loss {training['eval_loss_memory']:.4f} with memory, "
                f"{training['eval_loss_no_memory']:.4f} with the state zeroed"
            )
    else:
        lines.append("training    no summary (not trained with dmem-lsp adapter train)")
    print("\n".join(lines))
    return 0


def _convert(name: str, output: Path, base_model: str | None, verb: str) -> int:
    import torch

    from memory.adapter_io import read_adapter, write_adapter
    from memory.backbone import shapes_of

    source = _resolve(name, verb)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"{output} already exists and is not an empty directory; choose another --output")
    config, tensors, report = _describe(source)
    shapes = shapes_of(tensors)
    base = {k: report["base_model"].get(k) for k in ("id", "revision", "model_type")} | shapes
    if base_model:
        base["id"] = base_model
    extra = {"training": report["training"]} if report["training"] else {}
    if report["prompt"]:  # an official adapter's copy records what it was trained on (chat)
        extra["prompt"] = report["prompt"]
    extra["converted_from"] = {
        "format": report["format"], "path": str(source), "weights_sha256": report["weights_sha256"]
    }
    write_adapter(output, config, tensors, base, extra)
    _, copied, _ = read_adapter(output)  # the copy passes the same checks, and holds the same numbers
    if copied.keys() != tensors.keys() or not all(torch.equal(copied[k], tensors[k].float()) for k in tensors):
        raise ValueError(f"{output} does not read back as written; it is left there for inspection")
    _, _, written = _describe(output)
    done = "exported" if verb == "export" else "imported"
    print(f"{done} {source} (format: {report['format']}) to {output}: "
          f"{written['parameters']:,} parameters, sha256 {written['weights_sha256'][:16]}")
    return 0
