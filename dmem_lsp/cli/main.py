"""The ``dmem-lsp`` command line: serve over stdio (or TCP), or run ``doctor``, ``demo``, ``memory`` or ``adapter``.

Nothing imported here loads torch: the server must answer ``initialize`` at once and
load the model in the background. Logs go to stderr (stdout carries the protocol) and,
with ``--log-file``, to a file.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dmem_lsp import __version__
from dmem_lsp.cli import adapter as adapter_cli
from dmem_lsp.runtime.settings import DEFAULT_ADAPTER, DEFAULT_MODEL
from memory.config import DEFAULT_STORES as STORES  # the store names, defined once (torch-free)

DESCRIPTION = (
    "A local coding assistant served as a language server (VS Code, Neovim), "
    "with δ-mem: online memory per workspace that persists across restarts."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmem-lsp",
        description=DESCRIPTION,
        epilog="Flags given here win over the editor's settings (initializationOptions).",
    )
    parser.add_argument("--version", action="version", version=f"dmem-lsp {__version__}")
    parser.add_argument("--tcp", action="store_true", help="serve over TCP instead of stdio (for debugging)")
    parser.add_argument("--stdio", action="store_true", help="serve over stdio (the default; many clients pass it)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default %(default)s)")
    parser.add_argument("--port", type=int, default=2087, help="TCP port (default %(default)s)")
    parser.add_argument(
        "--model", metavar="ID_OR_DIR", help=f"Hugging Face id or local directory (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--adapter",
        metavar="ID_OR_DIR|none",
        help=f"δ-mem adapter, or none for an untrained one (default {DEFAULT_ADAPTER})",
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="where the model runs (default auto)")
    parser.add_argument(
        "--quantization",
        choices=("nf4", "none"),
        help="default: NF4 with bf16 compute on CUDA, full precision on the CPU",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch's CPU threads (default 0, auto: half the cores, at most 4; 1 on two)",
    )
    parser.add_argument("--log-file", metavar="PATH", help="also write the log to this file")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: every message)")
    parser.add_argument(
        "--reset-memory", action="store_true", help="clear the workspace's memory (all stores, or --store) and exit"
    )
    parser.add_argument(
        "--workspace", metavar="PATH",
        help="the workspace folder (default: the one an editor opens here: "
        "the nearest folder up with .dmem, .git, .hg or .svn)",
    )
    parser.add_argument("--store", choices=STORES, help="only this store (with --reset-memory)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("doctor", help="print versions, CUDA and bitsandbytes status, and where things are kept")
    commands.add_parser(
        "demo",
        help="see memory at work in a minute or two, on the CPU, offline: the real server on a small model "
        "writes a project's conventions into memory, completes from it, keeps it across a restart, forgets it on reset",
    )
    download = commands.add_parser(
        "download",
        help="download the model and the adapter into the Hugging Face cache, so the server starts offline",
        description="With no flags: the default (or given) model and adapter, and the hub adapter this "
        "repository's .dmem/config.toml names. With --model or --adapter: only those.",
    )
    download.add_argument(
        "--model", dest="download_model", metavar="ID", help=f"a Hugging Face model id (default {DEFAULT_MODEL})"
    )
    download.add_argument(
        "--adapter", dest="download_adapter", metavar="ID", help=f"a δ-mem adapter id (default {DEFAULT_ADAPTER})"
    )
    download.add_argument(
        "--revision", dest="download_revision", metavar="REV", help="the adapter's tag, branch or commit"
    )
    memory = commands.add_parser("memory", help="inspect and move workspace memory").add_subparsers(
        dest="memory_command", metavar="ACTION", required=True
    )
    memory.add_parser("status", help="tokens written per store, the last writes, the file size")
    export = memory.add_parser("export", help="write one store to a snapshot file")
    export.add_argument("--store", dest="export_store", choices=STORES, required=True)
    export.add_argument("--output", "-o", required=True, metavar="FILE")
    load = memory.add_parser("import", help="replace a store with a snapshot made with the same adapter")
    load.add_argument("file", metavar="FILE")
    for sub in (memory.choices["status"], export, load):
        sub.add_argument("--workspace", dest="memory_workspace", metavar="PATH", help="the workspace folder")
    adapter_cli.add_parser(commands)
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line fixes (only the flags that were given)."""
    flags = {
        "model": args.model, "adapter": args.adapter, "device": args.device, "quantization": args.quantization,
        "threads": args.threads,
    }
    return {key: value for key, value in flags.items() if value is not None}


QUIET_LOGGERS = ("bitsandbytes", "py.warnings")
"""Heard only with -v: libraries' notices (bitsandbytes' optional CPU kernels) and Python's
warnings (FutureWarning, DeprecationWarning from libraries). Editors show everything the
server writes to stderr as an error."""


def configure_logging(verbose: int, log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(_private(log_file), encoding="utf-8"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, handlers=handlers, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # pygls logs every message it sends at INFO
        logging.getLogger("pygls").setLevel(logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn goes to the "py.warnings" logger
    if verbose == 0:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    # transformers logs through a stderr handler of its own, set from this when it is imported
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error" if verbose == 0 else "warning")


def quiet_progress_bars() -> None:
    """No library progress bars (``Loading weights: 0%…``) from the server: its progress goes
    to the editor as LSP work-done progress, and stderr is the editor's error log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


TERMINAL_BANNER = """\
dmem-lsp {version}: a language server. Editors start it and talk to it over stdin/stdout,
so in a terminal it waits for an editor's messages and prints nothing more.
  Neovim 0.11+:  vim.opt.runtimepath:append('{root}/editors/neovim') and vim.lsp.enable('dmem')
  VS Code:       install the extension built from {root}/editors/vscode (README, "VS Code")
  Try it here:   dmem-lsp doctor      what it would load, and whether it would start
                 dmem-lsp download    get the model and adapter ahead of time
Ctrl-C ends it."""


def explain_in_a_terminal(tcp: bool) -> None:
    """When a person runs the server in a terminal: say what it is, and let Ctrl-C end it at once.

    (An editor's pipes are not a terminal: then nothing changes.) pygls reads stdin on a
    thread, so a KeyboardInterrupt would wait for that read to end; with nothing to save
    (an editor would have sent its messages), the process simply exits.
    """
    if not sys.stdin.isatty():
        return
    signal.signal(signal.SIGINT, _stop_at_once)
    if not tcp:
        checkout = Path(__file__).resolve().parents[2]
        root = str(checkout) if (checkout / "editors").is_dir() else "/path/to/dmem-lsp"  # a clone, or installed
        print(TERMINAL_BANNER.format(version=__version__, root=root), file=sys.stderr, flush=True)


def _stop_at_once(signum: int, frame: Any) -> None:
    os.write(2, b"\ndmem-lsp: stopped\n")  # not sys.stderr: its lock may be held by another thread
    os._exit(130)


def _private(path: str) -> str:
    """Create the log file 0600 (it holds code and paths), or make an existing one so."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    if os.path.isfile(path):  # not a terminal or a pipe
        try:
            os.chmod(path, 0o600)
        except OSError:
            pass  # not ours: logging to it is still what was asked
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.log_file)
    if args.command == "doctor":
        from dmem_lsp.cli.doctor import run_doctor

        return run_doctor(overrides_from(args))
    if args.command == "demo":
        from dmem_lsp.cli.demo import run_demo

        return run_demo()
    if args.command == "download":
        from dmem_lsp.runtime.download import run_download

        return run_download(overrides_from(args), args.download_model, args.download_adapter, args.download_revision)
    if args.command == "adapter":
        return adapter_cli.run(args)
    if args.reset_memory or args.command == "memory":
        from dmem_lsp.cli import memory as memory_cli
        from dmem_lsp.workspace.roots import workspace_root

        given = getattr(args, "memory_workspace", None) or args.workspace
        workspace = Path(given) if given else workspace_root(Path.cwd())
        if args.reset_memory:
            return memory_cli.reset_memory(workspace, args.store)
        if args.memory_command == "status":
            return memory_cli.memory_status(workspace)
        if args.memory_command == "export":
            return memory_cli.export_store(workspace, args.export_store, Path(args.output))
        return memory_cli.import_store(workspace, Path(args.file))
    quiet_progress_bars()
    explain_in_a_terminal(args.tcp)
    from dmem_lsp.lsp.features import create_server

    server = create_server(overrides_from(args))
    if args.tcp:
        server.start_tcp(args.host, args.port)
    else:
        server.start_io()
    return 0
